//! Each check type against a real server on 127.0.0.1, and each fault a check must report
//! clearly: refused, unreachable, DNS failure, slow beyond the timeout, TLS expired / wrong host
//! / self-signed, a redirect loop, a 100 MiB body, invalid conditions.

mod support;

use std::time::{Duration, Instant};

use gantry_uptime::check::run;
use gantry_uptime::plan::{PlanError, Secrets};
use support::*;

fn http_monitor(url: &str, extra: &str) -> String {
    format!(
        "apiVersion: uptime.gantry.dev/v1alpha1\nkind: Monitor\nmetadata: {{name: web}}\nspec:\n  type: http\n  timeout: 2s\n  http:\n    url: \"{url}\"\n{extra}"
    )
}

#[tokio::test]
async fn http_conditions_on_status_body_and_response_time() {
    let web = http_server(loopback()).await;
    let plan = compiled(&http_monitor(
        &url(web.addr, "/ok"),
        "  conditions:\n  - \"[STATUS] == 200\"\n  - \"[BODY].status == UP\"\n  - \"len([BODY].items) > 2\"\n  - \"[BODY] == pat(*all ok*)\"\n  - \"[RESPONSE_TIME] < 2000\"\n",
    ));
    let r = run(&plan, None).await;
    assert!(r.success, "{}", r.message);
    assert!(r.message.contains("HTTP 200"), "{}", r.message);

    let plan = compiled(&http_monitor(
        &url(web.addr, "/ok"),
        "  conditions: [\"[BODY].status == DOWN\"]\n",
    ));
    let r = run(&plan, None).await;
    assert!(!r.success);
    assert!(
        r.message.contains("[BODY].status (UP) == DOWN"),
        "{}",
        r.message
    );

    // Default condition: a status under 400.
    let r = run(&compiled(&http_monitor(&url(web.addr, "/fail"), "")), None).await;
    assert!(!r.success);
    assert!(r.message.contains("503"), "{}", r.message);
    assert!(!r.connection_error);
}

#[tokio::test]
async fn keyword_present_and_absent() {
    let web = http_server(loopback()).await;
    let present = format!(
        "apiVersion: uptime.gantry.dev/v1alpha1\nkind: Monitor\nmetadata: {{name: kw}}\nspec:\n  type: keyword\n  http:\n    url: \"{}\"\n    keyword: \"all ok\"\n",
        url(web.addr, "/ok")
    );
    assert!(run(&compiled(&present), None).await.success);
    let absent = present.replace(
        "keyword: \"all ok\"",
        "keyword: \"all ok\"\n    invertKeyword: true",
    );
    let r = run(&compiled(&absent), None).await;
    assert!(!r.success);
    assert!(
        r.message.contains("keyword 'all ok' found"),
        "{}",
        r.message
    );
    let missing = present.replace("all ok", "exploded");
    let r = run(&compiled(&missing), None).await;
    assert!(
        r.message.contains("keyword 'exploded' not in the body"),
        "{}",
        r.message
    );
}

#[tokio::test]
async fn bearer_token_from_a_secret() {
    let web = http_server(loopback()).await;
    let yaml = http_monitor(
        &url(web.addr, "/auth"),
        "    bearerTokenSecretRef: {name: api}\n",
    );
    let missing = compile(&yaml, &Secrets::new())
        .err()
        .expect("secret needed");
    assert!(
        matches!(missing, PlanError::Secret { ref name, .. } if name == "api"),
        "{missing}"
    );
    let secrets = Secrets::from([(
        "api".to_string(),
        [("token".to_string(), b"secret-token".to_vec())].into(),
    )]);
    let plan = compile(&yaml, &secrets).expect("plan");
    let r = run(&plan, None).await;
    assert!(r.success, "{}", r.message);
    let wrong = Secrets::from([(
        "api".to_string(),
        [("token".to_string(), b"nope".to_vec())].into(),
    )]);
    assert!(
        !run(&compile(&yaml, &wrong).expect("plan"), None)
            .await
            .success
    );
}

#[tokio::test]
async fn refused_and_unreachable_are_connection_errors() {
    let port = closed_port();
    let r = run(
        &compiled(&http_monitor(&format!("http://127.0.0.1:{port}/"), "")),
        None,
    )
    .await;
    assert!(!r.success);
    assert!(r.connection_error);
    assert!(
        r.message.to_lowercase().contains("refused"),
        "{}",
        r.message
    );

    let tcp = format!(
        "apiVersion: uptime.gantry.dev/v1alpha1\nkind: Monitor\nmetadata: {{name: t}}\nspec:\n  type: tcp\n  timeout: 2s\n  tcp: {{host: 127.0.0.1, port: {port}}}\n"
    );
    let r = run(&compiled(&tcp), None).await;
    assert!(!r.success && r.connection_error, "{r:?}");
    assert!(
        r.message.contains(&format!("127.0.0.1:{port}")),
        "{}",
        r.message
    );
}

/// Unreachable without leaving the machine: a loopback listener that never accepts, its
/// backlog full, so new connections are never answered (as a black-holed host).
#[tokio::test]
async fn unreachable_host_times_out_as_a_connection_error() {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.bind(loopback()).expect("bind");
    let listener = socket.listen(1).expect("listen");
    let addr = listener.local_addr().expect("addr");
    let mut fillers = Vec::new();
    for _ in 0..8 {
        if let Ok(Ok(s)) = tokio::time::timeout(
            Duration::from_millis(300),
            tokio::net::TcpStream::connect(addr),
        )
        .await
        {
            fillers.push(s);
        }
    }
    let tcp = format!(
        "apiVersion: uptime.gantry.dev/v1alpha1\nkind: Monitor\nmetadata: {{name: t}}\nspec:\n  type: tcp\n  timeout: 1s\n  tcp: {{host: 127.0.0.1, port: {}}}\n",
        addr.port()
    );
    let r = run(&compiled(&tcp), None).await;
    assert!(!r.success && r.connection_error, "{r:?}");
    assert!(r.message.contains("timed out"), "{}", r.message);
    drop(listener);
}

#[tokio::test]
async fn tcp_connects() {
    let web = http_server(loopback()).await;
    let tcp = format!(
        "apiVersion: uptime.gantry.dev/v1alpha1\nkind: Monitor\nmetadata: {{name: t}}\nspec:\n  type: tcp\n  tcp: {{host: 127.0.0.1, port: {}}}\n  conditions: [\"[CONNECTED] == true\", \"[RESPONSE_TIME] < 2000\"]\n",
        web.addr.port()
    );
    let r = run(&compiled(&tcp), None).await;
    assert!(r.success, "{}", r.message);
}

#[tokio::test]
async fn slow_beyond_the_timeout_fails_in_time() {
    let web = http_server(loopback()).await;
    let plan =
        compiled(&http_monitor(&url(web.addr, "/slow"), "").replace("timeout: 2s", "timeout: 1s"));
    let started = Instant::now();
    let r = run(&plan, None).await;
    assert!(!r.success);
    assert!(r.message.contains("timed out after 1s"), "{}", r.message);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the check waited for the server"
    );
}

#[tokio::test]
async fn redirect_loop_is_named() {
    let web = http_server(loopback()).await;
    let r = run(&compiled(&http_monitor(&url(web.addr, "/loop"), "")), None).await;
    assert!(!r.success);
    assert!(r.message.contains("redirect loop"), "{}", r.message);
    // Not following redirects: the 302 itself is the answer.
    let plan = compiled(&http_monitor(
        &url(web.addr, "/loop"),
        "    followRedirects: false\n  conditions: [\"[STATUS] == 302\"]\n",
    ));
    assert!(run(&plan, None).await.success);
}

#[tokio::test]
async fn a_100_mib_body_is_read_bounded() {
    let web = http_server(loopback()).await;
    let plan = compiled(&http_monitor(
        &url(web.addr, "/big"),
        "  conditions: [\"[STATUS] == 200\", \"len([BODY]) == 1048576\"]\n",
    ));
    let r = run(&plan, None).await;
    assert!(r.success, "{}", r.message);
    // Without a body condition nothing is read at all.
    let plan = compiled(&http_monitor(&url(web.addr, "/big"), ""));
    assert!(run(&plan, None).await.success);
}

fn tls_monitor(addr: std::net::SocketAddr, extra: &str) -> String {
    format!(
        "apiVersion: uptime.gantry.dev/v1alpha1\nkind: Monitor\nmetadata: {{name: cert}}\nspec:\n  type: tls\n  timeout: 3s\n  tls:\n    host: 127.0.0.1\n    port: {}\n    serverName: localhost\n    caSecretRef: {{name: ca}}\n{extra}",
        addr.port()
    )
}

fn ca_secret(pki: &Pki) -> Secrets {
    Secrets::from([(
        "ca".to_string(),
        [("ca.crt".to_string(), pki.ca_pem.clone().into_bytes())].into(),
    )])
}

#[tokio::test]
async fn tls_expiry_and_certificate_errors() {
    let pki = Pki::new();
    let secrets = ca_secret(&pki);

    let good = tls_server(pki.server(Leaf::ExpiresIn(10))).await;
    let plan = compile(&tls_monitor(good.addr, "    minValidity: 72h\n"), &secrets).expect("plan");
    let r = run(&plan, None).await;
    assert!(r.success, "{}", r.message);
    let left = r.certificate_seconds.expect("expiry seen");
    assert!((8 * 86_400..11 * 86_400).contains(&left), "{left}");
    let plan = compile(&tls_monitor(good.addr, "    minValidity: 720h\n"), &secrets).expect("plan");
    let r = run(&plan, None).await;
    assert!(!r.success);
    assert!(
        r.message.contains("[CERTIFICATE_EXPIRATION]"),
        "{}",
        r.message
    );

    for (leaf, words) in [
        (Leaf::Expired, "expired"),
        (Leaf::WrongHost, "wrong host"),
        (Leaf::SelfSigned, "unknown authority"),
    ] {
        let server = tls_server(pki.server(leaf)).await;
        let plan = compile(&tls_monitor(server.addr, ""), &secrets).expect("plan");
        let r = run(&plan, None).await;
        assert!(!r.success);
        assert!(r.message.contains(words), "{words}: {}", r.message);
        // The same errors over HTTPS.
        let https = format!("https://localhost:{}/", server.addr.port());
        let yaml = http_monitor(&https, "    certSecretRef: {name: ca}\n");
        let r = run(&compile(&yaml, &secrets).expect("plan"), None).await;
        assert!(!r.success);
        assert!(r.message.contains(words), "https {words}: {}", r.message);
    }
    // Expired but reported: the expiry is negative.
    let expired = tls_server(pki.server(Leaf::Expired)).await;
    let r = run(
        &compile(&tls_monitor(expired.addr, ""), &secrets).expect("plan"),
        None,
    )
    .await;
    assert!(r.certificate_seconds.is_some_and(|s| s < 0), "{r:?}");

    // Verification off: a self-signed endpoint is up.
    let selfsigned = tls_server(pki.server(Leaf::SelfSigned)).await;
    let yaml = http_monitor(
        &format!("https://localhost:{}/", selfsigned.addr.port()),
        "    insecureSkipVerify: true\n",
    );
    let r = run(&compiled(&yaml), None).await;
    assert!(r.success, "{}", r.message);
}

fn dns_monitor(server: std::net::SocketAddr, name: &str, extra: &str) -> String {
    format!(
        "apiVersion: uptime.gantry.dev/v1alpha1\nkind: Monitor\nmetadata: {{name: d}}\nspec:\n  type: dns\n  timeout: 2s\n  dns:\n    name: {name}\n    server: \"{server}\"\n{extra}"
    )
}

#[tokio::test]
async fn dns_answers_rcodes_and_failures() {
    let dns = dns_server().await;
    let plan = compiled(&dns_monitor(
        dns.addr,
        "app.test",
        "    expectedAnswers: [127.0.0.1, 127.0.0.2]\n",
    ));
    let r = run(&plan, None).await;
    assert!(r.success, "{}", r.message);
    let plan = compiled(&dns_monitor(
        dns.addr,
        "app.test",
        "    expectedAnswers: [127.0.0.9]\n",
    ));
    let r = run(&plan, None).await;
    assert!(!r.success);
    assert!(
        r.message.contains("expected answer '127.0.0.9'"),
        "{}",
        r.message
    );
    let plan = compiled(&dns_monitor(
        dns.addr,
        "text.test",
        "    recordType: TXT\n  conditions: [\"[DNS_RCODE] == NOERROR\", \"[BODY] == hello\"]\n",
    ));
    assert!(run(&plan, None).await.success);
    // DNS failure: NXDOMAIN fails the default condition, and can be expected.
    let r = run(&compiled(&dns_monitor(dns.addr, "missing.test", "")), None).await;
    assert!(!r.success);
    assert!(r.message.contains("NXDOMAIN"), "{}", r.message);
    let plan = compiled(&dns_monitor(
        dns.addr,
        "missing.test",
        "  conditions: [\"[DNS_RCODE] == NXDOMAIN\"]\n",
    ));
    assert!(run(&plan, None).await.success);
    // A server that does not answer.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
    let r = run(
        &compiled(&dns_monitor(
            silent.local_addr().expect("addr"),
            "app.test",
            "",
        )),
        None,
    )
    .await;
    assert!(!r.success && r.connection_error);
    assert!(r.message.contains("did not answer"), "{}", r.message);
}

#[tokio::test]
async fn invalid_specs_are_refused_with_the_condition_and_position() {
    let bad =
        |extra: &str| match compile(&http_monitor("http://127.0.0.1:1/", extra), &Secrets::new()) {
            Err(PlanError::InvalidSpec(m)) => m,
            Err(other) => panic!("{other}"),
            Ok(_) => panic!("accepted: {extra}"),
        };
    let m = bad("  conditions: [\"[STATUS]==200\"]\n");
    assert!(m.contains("'[STATUS]==200' at position 8"), "{m}");
    let m = bad("  conditions: [\"[STATUS] == 200\", \"[BODDY] == x\"]\n");
    assert!(m.contains("'[BODDY] == x' at position 0"), "{m}");
    let m = bad("  conditions: [\"[DNS_RCODE] == NOERROR\"]\n");
    assert!(m.contains("not known for http"), "{m}");
    let m = bad("  interval: soon\n");
    assert!(m.contains("spec.interval"), "{m}");
    let m = bad("  maintenance: [{recurrence: weekly, start: \"10:00\", duration: 1h}]\n");
    assert!(m.contains("weekdays"), "{m}");
}
