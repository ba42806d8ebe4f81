//! Pure logic of the serving data path (Knative Serving's API): the autoscaler's decisions.

pub mod autoscale;
