//! How large a `Work` frame becomes, estimated from payload lengths so that
//! dispatch never builds one larger than its worker accepts, and submission
//! refuses an input no worker could ever be sent.
//!
//! The estimate is the payloads' lengths plus fixed margins for everything
//! around them (msgpack headers, ids, the frame's version), each margin
//! larger than what it covers; a test checks it against real encodings.

use flotilla_protocol::servable::ServableRecord;

/// The frame around the batches: version, message tag, array headers.
pub(super) const FRAME_OVERHEAD: usize = 64;

/// One batch's own fields, beside its servable name, parameters, record
/// and inputs.
const BATCH_OVERHEAD: usize = 64;

/// One input's own fields (task id, headers), beside the input.
const ITEM_OVERHEAD: usize = 32;

/// What a batch of `servable` with `params` adds to a frame before any
/// input, `spec` being the record sent along, if any.
pub(super) fn batch_size(servable: &str, params: usize, spec: Option<&ServableRecord>) -> usize {
    let spec = spec.map_or(0, |record| {
        // Exact, and only paid for the first batch of a servable a worker
        // gets; a record that cannot be encoded is never sent either.
        rmp_serde::to_vec(record).map_or(0, |bytes| bytes.len())
    });
    BATCH_OVERHEAD + servable.len() + params + spec
}

/// What one input of `input` bytes adds to a frame.
pub(super) fn item_size(input: usize) -> usize {
    ITEM_OVERHEAD + input
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_protocol::interchange::{BatchId, DaemonMessage, WorkBatch, WorkItem};
    use flotilla_protocol::{Payload, TaskId, encode};

    #[test]
    fn the_estimate_never_falls_short_of_the_encoding() {
        for (items, input_len, params_len) in [
            (1usize, 0usize, 0usize),
            (1, 300, 10),
            (5, 70_000, 0),
            (40, 3, 65_600),
        ] {
            let batches: Vec<WorkBatch> = (0..3u64)
                .map(|b| WorkBatch {
                    id: BatchId(u64::MAX - b),
                    servable: "some-servable:1.2.3".into(),
                    params: Payload::from(vec![1u8; params_len]),
                    items: (0..items)
                        .map(|i| WorkItem {
                            task: TaskId(u64::MAX - i as u64),
                            input: Payload::from(vec![2u8; input_len]),
                        })
                        .collect(),
                    spec: None,
                })
                .collect();
            let estimate = FRAME_OVERHEAD
                + batches
                    .iter()
                    .map(|b| {
                        batch_size(&b.servable, b.params.len(), None)
                            + b.items
                                .iter()
                                .map(|i| item_size(i.input.len()))
                                .sum::<usize>()
                    })
                    .sum::<usize>();
            let encoded = encode(&DaemonMessage::Work { batches }).unwrap().len();
            assert!(
                encoded <= estimate,
                "{items} items of {input_len} bytes: {encoded} > {estimate}"
            );
            // And not wildly above it either.
            assert!(estimate - encoded < 3 * (BATCH_OVERHEAD + items * ITEM_OVERHEAD));
        }
        assert_eq!(batch_size("echo", 3, None), BATCH_OVERHEAD + 4 + 3);
        assert_eq!(item_size(10), ITEM_OVERHEAD + 10);
    }
}
