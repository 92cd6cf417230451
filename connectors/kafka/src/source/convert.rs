//! Messages into records, on the polling thread.

use super::*;

/// Turns messages into records; lives on the polling thread.
pub(super) struct Converter {
    pub(super) format: Format,
    pub(super) partitions: HashMap<TopicPartition, Arc<Partition>>,
    /// The partition of the last message: (topic, partition number).
    pub(super) last: Option<(TopicPartition, Arc<Partition>)>,
}

pub(super) fn text_or_base64(bytes: &[u8]) -> Value {
    match std::str::from_utf8(bytes) {
        Ok(s) => Value::String(s.to_string()),
        Err(_) => Value::String(base64::engine::general_purpose::STANDARD.encode(bytes)),
    }
}

impl Converter {
    /// The partition of a message. Messages come in runs of one partition
    /// (a fetched batch), so the last one answers most lookups without
    /// hashing or allocating.
    fn partition(&mut self, m: &BorrowedMessage<'_>) -> Arc<Partition> {
        if let Some(((topic, p), partition)) = &self.last
            && *p == m.partition()
            && topic == m.topic()
        {
            return partition.clone();
        }
        let partition = self
            .partitions
            .entry((m.topic().to_string(), m.partition()))
            .or_insert_with(|| Arc::new(partition_of(m.topic(), m.partition())))
            .clone();
        self.last = Some(((m.topic().to_string(), m.partition()), partition.clone()));
        partition
    }

    pub(super) fn convert(&mut self, m: &BorrowedMessage<'_>) -> Read {
        let partition = self.partition(m);
        // The offset to resume after this message.
        let position = Position {
            partition,
            offset: Value::from(m.offset() + 1),
        };
        let value = match (m.payload(), self.format) {
            // A tombstone (no payload at all).
            (None, _) => Value::Null,
            // Checked on the source's task (see `Read`).
            (Some(p), Format::Json) => return Read::Json(Meta::of(m), position, p.to_vec()),
            (Some(p), Format::Text) => match std::str::from_utf8(p) {
                Ok(s) => Value::String(s.to_string()),
                Err(e) => {
                    let error = format!("not UTF-8 text: {e}");
                    return Read::Item(SourceItem::Invalid(invalid(p, error, position)));
                }
            },
            (Some(p), Format::Bytes) => {
                Value::String(base64::engine::general_purpose::STANDARD.encode(p))
            }
        };
        Read::Item(SourceItem::Record(
            Meta::of(m).record(value.into(), position),
        ))
    }
}

/// What a record keeps of its message beside the value.
pub(super) struct Meta {
    key: Option<Value>,
    timestamp_ms: Option<i64>,
    headers: Vec<(String, Vec<u8>)>,
}

impl Meta {
    fn of(m: &BorrowedMessage<'_>) -> Meta {
        Meta {
            key: m.key().map(text_or_base64),
            timestamp_ms: m.timestamp().to_millis(),
            headers: m.headers().map(headers_of).unwrap_or_default(),
        }
    }

    fn record(self, value: Payload, position: Position) -> Record {
        let mut r = Record::new(value, position);
        r.key = self.key;
        r.timestamp_ms = self.timestamp_ms;
        r.headers = self.headers;
        r
    }
}

/// A message's headers. rdkafka's own accessors panic on a header name
/// that is not UTF-8 (`CStr::to_str().unwrap()`), and a producer may send
/// any bytes: names are read here with invalid bytes replaced instead.
pub(super) fn headers_of(headers: &BorrowedHeaders) -> Vec<(String, Vec<u8>)> {
    use rdkafka::bindings as rd;
    // SAFETY: a `BorrowedHeaders` is a view of librdkafka's native headers
    // (rdkafka itself casts between the two pointers); the names and values
    // librdkafka hands out live as long as the message, and are copied
    // before this returns.
    let native = headers as *const BorrowedHeaders as *const rd::rd_kafka_headers_t;
    (0..headers.count())
        .filter_map(|idx| unsafe {
            let mut name = std::ptr::null();
            let mut value = std::ptr::null();
            let mut size = 0usize;
            let err = rd::rd_kafka_header_get_all(native, idx, &mut name, &mut value, &mut size);
            if err != RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR || name.is_null() {
                return None;
            }
            let name = std::ffi::CStr::from_ptr(name)
                .to_string_lossy()
                .into_owned();
            let value = if value.is_null() {
                Vec::new()
            } else {
                std::slice::from_raw_parts(value as *const u8, size).to_vec()
            };
            Some((name, value))
        })
        .collect()
}

/// The whole message is kept (the broker bounds its size), so that its
/// dead letter can be replayed.
pub(super) fn invalid(raw: &[u8], error: String, position: Position) -> Invalid {
    Invalid {
        raw: Raw::of(raw),
        error,
        position,
    }
}

/// A message as the polling thread leaves it. JSON is checked on the
/// source's task, not on the polling thread: the thread, which librdkafka
/// already keeps busy, only reads and copies, and the check runs beside it
/// on another core.
pub(super) enum Read {
    Item(SourceItem),
    /// A record whose value is still the message's bytes.
    Json(Meta, Position, Vec<u8>),
}

impl Read {
    pub(super) fn position(&self) -> &Position {
        match self {
            Read::Item(item) => item.position(),
            Read::Json(_, position, _) => position,
        }
    }

    /// The item, its JSON checked (and handed over as text: parsed only if
    /// the sink needs the value; a JSON-lines file or a topic does not).
    pub(super) fn finish(self) -> SourceItem {
        let (meta, position, bytes) = match self {
            Read::Item(item) => return item,
            Read::Json(meta, position, bytes) => (meta, position, bytes),
        };
        let checked = match String::from_utf8(bytes) {
            Ok(text) => Payload::from_json(text)
                .map_err(|(e, text)| (format!("not JSON: {e}"), text.into_bytes())),
            Err(e) => Err((
                format!("not JSON: not UTF-8 text: {}", e.utf8_error()),
                e.into_bytes(),
            )),
        };
        match checked {
            Ok(value) => SourceItem::Record(meta.record(value, position)),
            Err((error, raw)) => SourceItem::Invalid(invalid(&raw, error, position)),
        }
    }
}

/// The partition of a position in `topic`'s partition `id`.
pub(crate) fn partition_of(topic: &str, id: i32) -> Partition {
    Partition::new(format!("{topic}/{id}"))
        .with_info(serde_json::json!({"topic": topic, "partition": id}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_names_that_are_not_utf8_do_not_panic() {
        use rdkafka::bindings as rd;
        // SAFETY: headers made and freed here; the cast is the one rdkafka
        // makes from native headers to `BorrowedHeaders`.
        unsafe {
            let native = rd::rd_kafka_headers_new(2);
            let (bad, ok) = (b"k\xfe", b"trace");
            rd::rd_kafka_header_add(native, bad.as_ptr().cast(), 2, b"v1".as_ptr().cast(), 2);
            rd::rd_kafka_header_add(native, ok.as_ptr().cast(), 5, std::ptr::null(), 0);
            let borrowed = &*(native as *const BorrowedHeaders);
            assert_eq!(
                headers_of(borrowed),
                [
                    ("k\u{fffd}".to_string(), b"v1".to_vec()),
                    ("trace".to_string(), Vec::new())
                ]
            );
            rd::rd_kafka_headers_destroy(native);
        }
    }
}
