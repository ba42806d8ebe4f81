//! Pure logic of notifications: webhook signatures and payload checks for Receivers, alert
//! selection and provider payloads for Alerts.

pub mod alert;
pub mod webhook;
