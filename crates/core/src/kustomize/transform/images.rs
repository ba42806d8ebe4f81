//! `images`: kustomize's image name/tag/digest overrides.

use regex::Regex;
use serde_json::Value;

/// One entry of `spec.images`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageOverride {
    /// Image name to match (without tag or digest), e.g. `nginx` or `ghcr.io/org/app`.
    pub name: String,
    /// Replacement name.
    pub new_name: Option<String>,
    /// Replacement tag.
    pub new_tag: Option<String>,
    /// Replacement digest (`sha256:...`).
    pub digest: Option<String>,
}

impl ImageOverride {
    /// kustomize's rule: the name, then optionally `:tag`, then optionally `@sha256:...`.
    /// (kustomize inserts the name into the expression unescaped; Gantry matches it literally.)
    fn matcher(&self) -> Option<Regex> {
        Regex::new(&format!(
            "^{}(:[a-zA-Z0-9_.{{}}-]*)?(@sha256:[a-zA-Z0-9_.{{}}-]*)?$",
            regex::escape(&self.name)
        ))
        .ok()
    }

    fn rewrite(&self, image: &str) -> String {
        let (name, mut tag, mut digest) = split_image(image);
        let name = self
            .new_name
            .as_deref()
            .filter(|n| !n.is_empty())
            .unwrap_or(name);
        let new_tag = self.new_tag.as_deref().filter(|t| !t.is_empty());
        let new_digest = self.digest.as_deref().filter(|d| !d.is_empty());
        // A new tag or digest replaces both the old tag and the old digest.
        match (new_tag, new_digest) {
            (Some(t), Some(d)) => (tag, digest) = (t, d),
            (Some(t), None) => (tag, digest) = (t, ""),
            (None, Some(d)) => (tag, digest) = ("", d),
            (None, None) => {}
        }
        let mut out = name.to_string();
        if !tag.is_empty() {
            out.push(':');
            out.push_str(tag);
        }
        if !digest.is_empty() {
            out.push('@');
            out.push_str(digest);
        }
        out
    }
}

/// Splits `[host[:port]/]path[:tag][@digest]` into name, tag and digest (without separators).
pub fn split_image(image: &str) -> (&str, &str, &str) {
    // A registry port is before the first slash; tags and digests come after it.
    let offset = image.find('/').filter(|&i| i > 0).unwrap_or(0);
    let rest = &image[offset..];
    let at = rest.find('@').map(|i| i + offset);
    let colon = rest.find(':').map(|i| i + offset);
    match (colon, at) {
        (None, None) => (image, "", ""),
        (c, Some(a)) if c.is_none_or(|c| a < c) => (&image[..a], "", &image[a + 1..]),
        (Some(c), Some(a)) => (&image[..c], &image[c + 1..a], &image[a + 1..]),
        (Some(c), None) => (&image[..c], &image[c + 1..], ""),
        (None, Some(_)) => unreachable!("covered above"),
    }
}

/// Rewrites the `image` of every container and init container that an override matches (the
/// first matching override wins). Like kustomize, containers are found under any `containers`
/// or `initContainers` list of any object, which covers Pods, workload templates, CronJobs
/// and custom resources with pod templates.
pub fn set_images(objects: &mut [Value], images: &[ImageOverride]) {
    if images.is_empty() {
        return;
    }
    let matchers: Vec<(Regex, &ImageOverride)> = images
        .iter()
        .filter_map(|i| i.matcher().map(|m| (m, i)))
        .collect();
    for obj in objects.iter_mut() {
        walk(obj, &matchers);
    }
}

fn walk(value: &mut Value, matchers: &[(Regex, &ImageOverride)]) {
    match value {
        Value::Object(map) => {
            for (key, item) in map.iter_mut() {
                if (key == "containers" || key == "initContainers")
                    && let Value::Array(containers) = item
                {
                    for container in containers.iter_mut() {
                        update_container(container, matchers);
                    }
                }
                walk(item, matchers);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|i| walk(i, matchers)),
        _ => {}
    }
}

fn update_container(container: &mut Value, matchers: &[(Regex, &ImageOverride)]) {
    let Some(image) = container.get_mut("image") else {
        return;
    };
    let Some(current) = image.as_str() else {
        return;
    };
    if let Some((_, o)) = matchers.iter().find(|(m, _)| m.is_match(current)) {
        *image = Value::String(o.rewrite(current));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn split() {
        let cases = [
            ("nginx", ("nginx", "", "")),
            ("nginx:1.27", ("nginx", "1.27", "")),
            ("nginx@sha256:abc", ("nginx", "", "sha256:abc")),
            ("nginx:1.27@sha256:abc", ("nginx", "1.27", "sha256:abc")),
            ("localhost:5000/app", ("localhost:5000/app", "", "")),
            ("localhost:5000/app:v1", ("localhost:5000/app", "v1", "")),
            (
                "ghcr.io/org/app:v1@sha256:abc",
                ("ghcr.io/org/app", "v1", "sha256:abc"),
            ),
        ];
        for (image, want) in cases {
            assert_eq!(split_image(image), want, "{image}");
        }
    }

    fn over(
        name: &str,
        new_name: Option<&str>,
        tag: Option<&str>,
        digest: Option<&str>,
    ) -> ImageOverride {
        ImageOverride {
            name: name.into(),
            new_name: new_name.map(Into::into),
            new_tag: tag.map(Into::into),
            digest: digest.map(Into::into),
        }
    }

    #[test]
    fn rewrite_rules() {
        // (image in the manifest, override, result)
        let cases = [
            (
                "nginx",
                over("nginx", None, Some("1.27"), None),
                "nginx:1.27",
            ),
            (
                "nginx:1.0",
                over("nginx", None, Some("1.27"), None),
                "nginx:1.27",
            ),
            (
                "nginx:1.0",
                over("nginx", Some("my/nginx"), None, None),
                "my/nginx:1.0",
            ),
            (
                "nginx:1.0",
                over("nginx", None, None, Some("sha256:d")),
                "nginx@sha256:d",
            ),
            (
                "nginx:1.0@sha256:a",
                over("nginx", None, Some("2"), None),
                "nginx:2",
            ),
            (
                "nginx:1.0",
                over("nginx", None, Some("2"), Some("sha256:d")),
                "nginx:2@sha256:d",
            ),
            (
                "nginx@sha256:a",
                over("nginx", Some("r.io/nginx"), None, None),
                "r.io/nginx@sha256:a",
            ),
            // Not a match: a longer name, a different registry, a prefix.
            (
                "nginx-extra:1",
                over("nginx", None, Some("2"), None),
                "nginx-extra:1",
            ),
            (
                "docker.io/nginx:1",
                over("nginx", None, Some("2"), None),
                "docker.io/nginx:1",
            ),
            (
                "localhost:5000/app:1",
                over("localhost:5000/app", None, Some("2"), None),
                "localhost:5000/app:2",
            ),
        ];
        for (image, o, want) in cases {
            let mut objs = vec![
                json!({"kind": "Pod", "spec": {"containers": [{"name": "c", "image": image}]}}),
            ];
            set_images(&mut objs, std::slice::from_ref(&o));
            assert_eq!(
                objs[0]["spec"]["containers"][0]["image"], want,
                "{image} with {o:?}"
            );
        }
    }

    #[test]
    fn every_pod_template_shape() {
        let mut objs = vec![
            json!({"kind": "Deployment", "spec": {"template": {"spec": {
                "initContainers": [{"name": "i", "image": "busybox"}],
                "containers": [{"name": "c", "image": "nginx:1"}, {"name": "s", "image": "envoy:1"}]}}}}),
            json!({"kind": "CronJob", "spec": {"jobTemplate": {"spec": {"template": {"spec": {
                "containers": [{"name": "c", "image": "nginx"}]}}}}}}),
            json!({"kind": "Widget", "spec": {"podTemplate": {"containers": [{"name": "c", "image": "nginx"}]}}}),
            json!({"kind": "ConfigMap", "data": {"image": "nginx"}}),
        ];
        set_images(
            &mut objs,
            &[
                over("nginx", None, Some("2"), None),
                over("busybox", None, Some("1.36"), None),
            ],
        );
        let t = &objs[0]["spec"]["template"]["spec"];
        assert_eq!(t["initContainers"][0]["image"], "busybox:1.36");
        assert_eq!(t["containers"][0]["image"], "nginx:2");
        assert_eq!(t["containers"][1]["image"], "envoy:1");
        assert_eq!(
            objs[1]["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["image"],
            "nginx:2"
        );
        assert_eq!(
            objs[2]["spec"]["podTemplate"]["containers"][0]["image"],
            "nginx:2"
        );
        assert_eq!(objs[3]["data"]["image"], "nginx");
    }
}
