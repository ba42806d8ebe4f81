//! Uptime monitoring in Gantry: `Monitor`s (`uptime.gantry.dev/v1alpha1`) checked at their
//! interval, their state (PENDING/UP/DOWN/MAINTENANCE), alerts through Flux's Providers,
//! Prometheus series, and the same engine outside Kubernetes.
//!
//! - [`plan`]: a Monitor's spec checked and compiled once (→ `InvalidSpec` when wrong).
//! - [`check`]: the checks (HTTP(S), keyword, TCP, DNS, TLS, heartbeat) and their conditions.
//! - [`engine`]: one timer queue for every Monitor, the state machine, history, metrics.
//! - [`alert`]: alerts rendered and sent with the notification code's providers and retries.
//! - [`controller`]: the Monitor controller on the shared harness, status and Events.
//! - [`standalone`]: `gantry uptime serve --config DIR`: Monitors and Providers from YAML.
//! - [`store`]: results kept in the history store (SQLite/Postgres), states recovered after a restart.
//! - [`heartbeat`]: the push endpoint, and the sender `gantry run --uptime-heartbeat-url` uses.

pub mod alert;
pub mod check;
pub mod controller;
pub mod dns;
pub mod engine;
pub mod heartbeat;
pub mod history;
pub mod plan;
pub mod standalone;
pub mod store;
pub mod tls;
