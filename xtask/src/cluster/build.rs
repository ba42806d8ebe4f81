//! Building the control plane's binaries from the Go module proxy, once per machine.
//!
//! Every artefact lands in `<cache>/<component>-<version>/` and is only moved there once the build
//! succeeded, so an interrupted build is never mistaken for a finished one and a second run
//! builds nothing. Go's own module and build caches live beside them, so a rebuild after a version
//! bump only compiles what changed.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;
use std::{fs, thread};

use anyhow::{Context as _, Result, bail};

use super::Versions;

/// Absolute paths of everything the control plane runs.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub etcd: PathBuf,
    pub kube_apiserver: PathBuf,
    pub kube_controller_manager: PathBuf,
    pub kube_scheduler: PathBuf,
    pub kwok: PathBuf,
    /// kwok's stage definitions (node and pod lifecycles), concatenated into one config file.
    pub kwok_stages: PathBuf,
    /// kwok's `Logs` CRD: a `Logs` object names the file kwok serves as a Pod's container log.
    pub kwok_logs_crd: PathBuf,
}

/// Builds whatever is missing for `versions` under `cache`, printing progress, and returns the paths.
pub fn ensure(cache: &Path, versions: &Versions) -> Result<Binaries> {
    let _lock = if is_built(cache, versions) {
        None
    } else {
        Some(crate::cache_lock::exclusive(cache, "control-plane")?)
    };
    let go = Go::new(cache)?;
    let k8s_dir = cache.join(format!("kubernetes-{}", versions.kubernetes));
    let etcd_dir = cache.join(format!("etcd-{}", versions.etcd));
    let kwok_dir = cache.join(format!("kwok-{}", versions.kwok));

    if !k8s_dir.join("bin/kube-apiserver").exists() {
        build_once(&k8s_dir, |work| {
            go.build_kubernetes(work, &versions.kubernetes)
        })?;
    }
    if !etcd_dir.join("bin/etcd").exists() {
        build_once(&etcd_dir, |work| go.build_etcd(work, &versions.etcd))?;
    }
    if !kwok_dir.join("bin/kwok").exists() || !kwok_dir.join(KWOK_LOGS_CRD).exists() {
        build_once(&kwok_dir, |work| go.build_kwok(work, &versions.kwok))?;
    }
    Ok(Binaries {
        etcd: etcd_dir.join("bin/etcd"),
        kube_apiserver: k8s_dir.join("bin/kube-apiserver"),
        kube_controller_manager: k8s_dir.join("bin/kube-controller-manager"),
        kube_scheduler: k8s_dir.join("bin/kube-scheduler"),
        kwok: kwok_dir.join("bin/kwok"),
        kwok_stages: kwok_dir.join("stages.yaml"),
        kwok_logs_crd: kwok_dir.join(KWOK_LOGS_CRD),
    })
}

/// Whether every binary of `versions` is already in `cache` (nothing to build, no Go needed).
pub fn is_built(cache: &Path, versions: &Versions) -> bool {
    [
        cache.join(format!(
            "kubernetes-{}/bin/kube-apiserver",
            versions.kubernetes
        )),
        cache.join(format!("etcd-{}/bin/etcd", versions.etcd)),
        cache.join(format!("kwok-{}/bin/kwok", versions.kwok)),
        cache.join(format!("kwok-{}/{KWOK_LOGS_CRD}", versions.kwok)),
    ]
    .iter()
    .all(|bin| bin.exists())
}

/// Runs `build` in a scratch directory next to `dest` and renames it into place on success.
fn build_once(dest: &Path, build: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let mut work = dest.as_os_str().to_owned();
    work.push(".partial");
    let work = PathBuf::from(work);
    if work.exists() {
        fs::remove_dir_all(&work).with_context(|| format!("removing {}", work.display()))?;
    }
    fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let started = Instant::now();
    build(&work)?;
    if dest.exists() {
        fs::remove_dir_all(dest)?;
    }
    fs::rename(&work, dest).with_context(|| format!("moving the build to {}", dest.display()))?;
    eprintln!(
        "[build] {} done in {:.0?}",
        dest.file_name().unwrap_or_default().to_string_lossy(),
        started.elapsed()
    );
    Ok(())
}

/// The `go` command with the project's caches and a static, reproducible build setup.
struct Go {
    mod_cache: PathBuf,
    build_cache: PathBuf,
}

impl Go {
    fn new(cache: &Path) -> Result<Self> {
        let found = Command::new("go").arg("version").output();
        match found {
            Ok(out) if out.status.success() => {}
            _ => bail!(
                "the `go` command is needed to build the local control plane (Go 1.26 or newer); \
                 install Go or point GANTRY_KUBECONFIG at an existing cluster"
            ),
        }
        Ok(Self {
            mod_cache: cache.join("go/mod"),
            build_cache: cache.join("go/build"),
        })
    }

    fn command(&self, dir: &Path) -> Command {
        let mut cmd = Command::new("go");
        cmd.current_dir(dir)
            .env("GOMODCACHE", &self.mod_cache)
            .env("GOCACHE", &self.build_cache)
            .env("GOFLAGS", "-mod=mod")
            .env("CGO_ENABLED", "0")
            // Never let a go.mod line fetch another toolchain: only the proxy's modules are reachable.
            .env("GOTOOLCHAIN", "local")
            .env_remove("GOPATH");
        cmd
    }

    /// Runs a go command, streaming a condensed view of its output; on failure the error carries
    /// the output's tail.
    fn run(&self, dir: &Path, what: &str, args: &[&str]) -> Result<()> {
        self.run_env(dir, what, args, &[])
    }

    fn run_env(
        &self,
        dir: &Path,
        what: &str,
        args: &[&str],
        envs: &[(&str, &OsStr)],
    ) -> Result<()> {
        let shown: Vec<&str> = args.iter().copied().take(6).collect();
        let more = if args.len() > shown.len() { " ..." } else { "" };
        eprintln!("[build] {what}: go {}{more}", shown.join(" "));
        let mut child = self
            .command(dir)
            .args(args)
            .envs(envs.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting go")?;
        let stdout = child.stdout.take().expect("piped");
        let stderr = child.stderr.take().expect("piped");
        let out_thread = thread::spawn(move || {
            BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                .collect::<Vec<_>>()
        });
        // `go build -v` names each package as it compiles it: a count every 200 keeps the user
        // informed during a build of several minutes without flooding the terminal.
        let mut lines = Vec::new();
        let mut packages = 0usize;
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if !line.starts_with("go: ") {
                packages += 1;
                if packages.is_multiple_of(200) {
                    eprintln!("[build] {what}: {packages} packages compiled...");
                }
            }
            lines.push(line);
        }
        let status = child.wait().context("waiting for go")?;
        let mut output = out_thread.join().unwrap_or_default();
        output.extend(lines);
        if !status.success() {
            let tail = output[output.len().saturating_sub(30)..].join("\n");
            bail!("{what} failed ({status}):\n{tail}");
        }
        Ok(())
    }

    /// Resolves a module version through the proxy, turning "not served" into a message that
    /// names the module and version.
    fn download(&self, dir: &Path, module: &str, version: &str) -> Result<serde_json::Value> {
        let spec = format!("{module}@{version}");
        let out = self
            .command(dir)
            .args(["mod", "download", "-json", &spec])
            .output()
            .context("running go mod download")?;
        let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if let Some(err) = info.get("Error").and_then(|e| e.as_str()) {
            bail!("Go module {spec} could not be fetched from the Go module proxy: {err}");
        }
        if !out.status.success() {
            bail!(
                "Go module {spec} could not be fetched from the Go module proxy: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(info)
    }

    fn init_module(&self, work: &Path, name: &str) -> Result<PathBuf> {
        let src = work.join("src");
        fs::create_dir_all(&src)?;
        self.run(&src, "wrapper module", &["mod", "init", name])?;
        Ok(src)
    }

    /// kube-apiserver, kube-controller-manager and kube-scheduler from `k8s.io/kubernetes`.
    ///
    /// Its go.mod points the ~30 staging modules at `./staging/...`, and replace directives of a
    /// dependency are ignored, so `go install` refuses it. A wrapper module that replaces every
    /// staging module with its published twin (`v0.X.Y` for `v1.X.Y`) builds the real commands.
    fn build_kubernetes(&self, work: &Path, version: &str) -> Result<()> {
        let staging_version = version.replacen("v1.", "v0.", 1);
        let src = self.init_module(work, "gantry.local/kubernetes")?;
        let info = self.download(&src, "k8s.io/kubernetes", version)?;
        let gomod_path = info["GoMod"]
            .as_str()
            .context("go mod download printed no GoMod path")?;
        let upstream =
            fs::read_to_string(gomod_path).with_context(|| format!("reading {gomod_path}"))?;
        let directives = upstream_directives(&upstream);
        self.download(&src, "k8s.io/api", &staging_version)?;

        let mut edit = vec!["mod".to_string(), "edit".to_string()];
        if let Some(go_version) = directives.go {
            edit.push(format!("-go={go_version}"));
        }
        edit.extend(directives.godebug.iter().map(|g| format!("-godebug={g}")));
        edit.extend(
            directives
                .staging
                .iter()
                .map(|m| format!("-replace={m}={m}@{staging_version}")),
        );
        edit.push(format!("-require=k8s.io/kubernetes@{version}"));
        let edit: Vec<&str> = edit.iter().map(String::as_str).collect();
        self.run(&src, "kubernetes wrapper", &edit)?;

        let commands = [
            "k8s.io/kubernetes/cmd/kube-apiserver",
            "k8s.io/kubernetes/cmd/kube-controller-manager",
            "k8s.io/kubernetes/cmd/kube-scheduler",
        ];
        let tools: Vec<String> = commands.iter().map(|c| format!("{c}@{version}")).collect();
        let mut get = vec!["get", "-tool"];
        get.extend(tools.iter().map(String::as_str));
        self.run(&src, "kubernetes dependencies", &get)?;

        // Without these the servers report v0.0.0-master and clients warn about version skew.
        let (major, minor) = major_minor(version)?;
        let mut ldflags = vec!["-s".to_string(), "-w".to_string()];
        for pkg in [
            "k8s.io/component-base/version",
            "k8s.io/client-go/pkg/version",
        ] {
            for (key, value) in [
                ("gitVersion", version),
                ("gitMajor", major.as_str()),
                ("gitMinor", minor.as_str()),
                ("gitTreeState", "clean"),
                ("buildDate", "1970-01-01T00:00:00Z"),
            ] {
                ldflags.push(format!("-X {pkg}.{key}={value}"));
            }
        }
        let ldflags = ldflags.join(" ");
        let out_dir = format!("{}/", work.join("bin").display());
        let mut build = vec![
            "build",
            "-v",
            "-trimpath",
            "-buildvcs=false",
            "-ldflags",
            &ldflags,
            "-o",
            &out_dir,
        ];
        build.extend(commands);
        eprintln!(
            "[build] kubernetes {version}: compiling ~2500 packages; the first build takes \
             about 5-7 minutes on 2 cores and is cached afterwards"
        );
        self.run(&src, &format!("kubernetes {version}"), &build)
    }

    /// etcd's server module has a `main` package at its root, but replace directives of its own,
    /// so it too is built through a wrapper module.
    fn build_etcd(&self, work: &Path, version: &str) -> Result<()> {
        let src = self.init_module(work, "gantry.local/etcd")?;
        self.download(&src, "go.etcd.io/etcd/server/v3", version)?;
        let tool = format!("go.etcd.io/etcd/server/v3@{version}");
        self.run(&src, "etcd dependencies", &["get", "-tool", &tool])?;
        let out = work.join("bin/etcd");
        let out = out.to_string_lossy();
        self.run(
            &src,
            &format!("etcd {version}"),
            &[
                "build",
                "-v",
                "-trimpath",
                "-buildvcs=false",
                "-ldflags",
                "-s -w",
                "-o",
                &out,
                "go.etcd.io/etcd/server/v3",
            ],
        )
    }

    /// kwok installs directly; its stages ship in the module and are not built into the binary.
    fn build_kwok(&self, work: &Path, version: &str) -> Result<()> {
        let src = self.init_module(work, "gantry.local/kwok")?;
        let info = self.download(&src, "sigs.k8s.io/kwok", version)?;
        let module_dir = PathBuf::from(info["Dir"].as_str().context("no module Dir for kwok")?);
        let spec = format!("sigs.k8s.io/kwok/cmd/kwok@{version}");
        let bin = work.join("bin");
        fs::create_dir_all(&bin)?;
        self.run_env(
            &src,
            &format!("kwok {version}"),
            &["install", "-v", "-trimpath", "-ldflags", "-s -w", &spec],
            &[("GOBIN", bin.as_os_str())],
        )?;
        write_kwok_stages(&module_dir, &work.join("stages.yaml"))?;
        let crd = module_dir.join("kustomize/crd/bases/kwok.x-k8s.io_logs.yaml");
        fs::copy(&crd, work.join(KWOK_LOGS_CRD))
            .with_context(|| format!("copying {}", crd.display()))?;
        Ok(())
    }
}

/// File name of kwok's `Logs` CRD in its cache directory.
const KWOK_LOGS_CRD: &str = "logs-crd.yaml";

/// The stages that make kwok behave like a fast kubelet: nodes become Ready and keep a lease,
/// pods become Ready (or Complete), and deleted pods go away instead of hanging in Terminating.
const KWOK_STAGES: &[&str] = &[
    "node/fast/node-initialize.yaml",
    "node/heartbeat-with-lease/node-heartbeat-with-lease.yaml",
    "pod/fast/pod-ready.yaml",
    "pod/fast/pod-complete.yaml",
    "pod/fast/pod-delete.yaml",
];

fn write_kwok_stages(module_dir: &Path, dest: &Path) -> Result<()> {
    let stage_dir = module_dir.join("kustomize/stage");
    let mut all = String::new();
    for stage in KWOK_STAGES {
        let path = stage_dir.join(stage);
        let text = fs::read_to_string(&path)
            .with_context(|| format!("reading kwok stage {}", path.display()))?;
        all.push_str("---\n");
        all.push_str(&text);
        all.push('\n');
    }
    fs::write(dest, all).with_context(|| format!("writing {}", dest.display()))
}

/// What the wrapper module must mirror from k8s.io/kubernetes's own go.mod.
#[derive(Debug, Default, PartialEq)]
struct UpstreamDirectives {
    go: Option<String>,
    godebug: Vec<String>,
    /// Module paths replaced by `./staging/...` upstream.
    staging: Vec<String>,
}

fn upstream_directives(gomod: &str) -> UpstreamDirectives {
    let mut out = UpstreamDirectives::default();
    for line in gomod.lines().map(str::trim) {
        if let Some(v) = line.strip_prefix("go ") {
            out.go = Some(v.trim().to_string());
        } else if let Some(v) = line.strip_prefix("godebug ") {
            out.godebug.push(v.trim().to_string());
        } else if let Some((module, target)) = line.split_once("=>")
            && target.trim().starts_with("./staging/")
        {
            let module = module.trim().trim_start_matches("replace").trim();
            out.staging.push(module.to_string());
        }
    }
    out
}

fn major_minor(version: &str) -> Result<(String, String)> {
    let mut parts = version.trim_start_matches('v').split('.');
    match (parts.next(), parts.next()) {
        (Some(major), Some(minor)) => Ok((major.to_string(), minor.to_string())),
        _ => bail!("Kubernetes version {version:?} is not of the form v1.X.Y"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirrors_go_godebug_and_every_staging_replace() {
        let gomod = "module k8s.io/kubernetes\n\ngo 1.26.0\n\ngodebug default=go1.26\n\n\
            require (\n\tk8s.io/api v0.0.0\n)\n\nreplace (\n\tk8s.io/api => ./staging/src/k8s.io/api\n\
            \tk8s.io/client-go => ./staging/src/k8s.io/client-go\n\tfoo.io/x => foo.io/x v1.2.3\n)\n\
            replace k8s.io/kms => ./staging/src/k8s.io/kms\n";
        let d = upstream_directives(gomod);
        assert_eq!(d.go.as_deref(), Some("1.26.0"));
        assert_eq!(d.godebug, vec!["default=go1.26"]);
        assert_eq!(
            d.staging,
            vec!["k8s.io/api", "k8s.io/client-go", "k8s.io/kms"]
        );
    }

    #[test]
    fn splits_major_and_minor() {
        assert_eq!(
            major_minor("v1.36.3").unwrap(),
            ("1".to_string(), "36".to_string())
        );
        assert!(major_minor("latest").is_err());
    }
}
