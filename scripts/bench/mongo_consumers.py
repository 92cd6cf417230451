"""Kafka → MongoDB the way the Python tutorials write it, for
scripts/bench-mongodb to time beside ferry.

  tutorial: kafka-python consumer, pymongo insert_one per message, the
            consumer's auto-commit (the classic tutorial's consumer).
  batched:  confluent-kafka consumer, consume() in batches of 1,000,
            insert_many (unordered), then a synchronous commit of the
            offsets: no loss after a crash (at-least-once).

Usage: mongo_consumers.py MODE BROKERS TOPIC GROUP MONGODB_URI DB COLL COUNT

Reads COUNT messages, then prints one JSON line: {"messages": n,
"seconds": s}, where the clock runs from the first message to the last
write (joining the group is not timed, as for ferry and the raw consumer).
"""

import json
import sys
import time

from pymongo import MongoClient


def tutorial(brokers, topic, group, coll, count):
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=brokers.split(","),
        group_id=group,
        auto_offset_reset="earliest",
        value_deserializer=lambda m: json.loads(m.decode("utf-8")),
    )
    n, start = 0, None
    for message in consumer:
        if start is None:
            start = time.monotonic()
        coll.insert_one(message.value)
        n += 1
        if n >= count:
            break
    seconds = time.monotonic() - start
    consumer.close()
    return n, seconds


def batched(brokers, topic, group, coll, count):
    from confluent_kafka import Consumer

    consumer = Consumer(
        {
            "bootstrap.servers": brokers,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            # The same fetch back-off ferry and the raw consumer use: the
            # default 1 s idles a consumer draining a backlog.
            "fetch.queue.backoff.ms": 10,
        }
    )
    consumer.subscribe([topic])
    n, start = 0, None
    while n < count:
        messages = consumer.consume(num_messages=1000, timeout=1.0)
        docs = []
        for m in messages:
            if m.error():
                raise SystemExit(f"consuming: {m.error()}")
            docs.append(json.loads(m.value()))
        if not docs:
            continue
        if start is None:
            start = time.monotonic()
        coll.insert_many(docs, ordered=False)
        consumer.commit(asynchronous=False)
        n += len(docs)
    seconds = time.monotonic() - start
    consumer.close()
    return n, seconds


def main():
    mode, brokers, topic, group, uri, db, coll_name, count = sys.argv[1:]
    coll = MongoClient(uri)[db][coll_name]
    run = {"tutorial": tutorial, "batched": batched}[mode]
    n, seconds = run(brokers, topic, group, coll, int(count))
    print(json.dumps({"messages": n, "seconds": seconds}))


if __name__ == "__main__":
    main()
