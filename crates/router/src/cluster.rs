//! The cluster side: fills the routing table from Knative Services, Revisions and their Pods,
//! and scales Deployments through their `/scale` subresource.
