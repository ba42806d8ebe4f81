//! In-process reconcile requests: one controller asks another to run now.
//!
//! A new artifact triggers the Kustomizations that use it, a Kustomization becoming Ready triggers
//! its dependents, a webhook triggers its targets: all without waiting for an interval or a
//! round trip through the API server. Feed [`Trigger::stream`] to `Controller::reconcile_on`.

use futures::Stream;
use kube::Resource;
use kube::runtime::reflector::ObjectRef;
use tokio::sync::mpsc;

/// The sending half: cheap to clone, never blocks.
pub struct Trigger<K: Resource<DynamicType = ()>> {
    tx: mpsc::UnboundedSender<ObjectRef<K>>,
}

impl<K: Resource<DynamicType = ()>> Clone for Trigger<K> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
        }
    }
}

impl<K: Resource<DynamicType = ()>> Trigger<K> {
    /// A trigger and the stream its requests arrive on.
    pub fn new() -> (Self, impl Stream<Item = ObjectRef<K>> + Send + 'static)
    where
        K: 'static,
    {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let stream = futures::stream::poll_fn(move |cx| rx.poll_recv(cx));
        (Self { tx }, stream)
    }

    /// Requests a reconcile of `namespace/name`. Dropped silently once the controller is gone.
    pub fn request(&self, name: &str, namespace: &str) {
        let _ = self.tx.send(ObjectRef::new(name).within(namespace));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use k8s_openapi::api::core::v1::ConfigMap;

    #[tokio::test]
    async fn requests_arrive_in_order() {
        let (trigger, mut stream) = Trigger::<ConfigMap>::new();
        trigger.clone().request("a", "ns1");
        trigger.request("b", "ns2");
        assert_eq!(stream.next().await, Some(ObjectRef::new("a").within("ns1")));
        assert_eq!(stream.next().await, Some(ObjectRef::new("b").within("ns2")));
    }
}
