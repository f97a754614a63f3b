//! The relay's partitioner agrees with librdkafka's `murmur2_random`, which the
//! producer uses and which matches the Java client.

use linkwork_bus::partitioner::partition_for;
use linkwork_bus::{Outbound, Producer};

use crate::helpers::stack;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_partition_choice_matches_the_clients_for_keyed_messages() {
    let stack = stack();
    let topic = stack.topic("it.partitioner", 7).await;
    let producer = Producer::new(&stack.kafka).unwrap();
    let keys: Vec<String> = (0..200)
        .map(|n| format!("0f6295e8-5eb0-5250-ab5f-{n:012}"))
        .collect();
    let outbound = keys
        .iter()
        .map(|key| Outbound {
            topic: &topic,
            key: Some(key.as_bytes()),
            partition: None,
            payload: b"{}",
            headers: Default::default(),
        })
        .collect();
    let deliveries = producer.send_all(outbound).await;
    for (key, delivery) in keys.iter().zip(deliveries) {
        let delivered = delivery.expect("acknowledged");
        assert_eq!(
            delivered.partition,
            partition_for(key.as_bytes(), 7),
            "key {key}"
        );
    }
}
