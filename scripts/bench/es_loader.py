"""file → Elasticsearch the way the Python client's docs write it, for
scripts/bench-elasticsearch to time beside ferry: elasticsearch-py's
helpers.streaming_bulk over the JSON lines of a file, 1,000 actions per
request, each document's _id its line number (so a rerun overwrites).

Usage: es_loader.py URL INDEX FILE
Prints one JSON line: {"documents": n, "seconds": s}.
"""

import json
import sys
import time

from elasticsearch import Elasticsearch, helpers


def actions(index, path):
    with open(path, "rb") as f:
        for n, line in enumerate(f):
            yield {"_index": index, "_id": str(n), "_source": json.loads(line)}


def main():
    url, index, path = sys.argv[1:]
    client = Elasticsearch(url, request_timeout=60)
    start = time.monotonic()
    n = 0
    for ok, item in helpers.streaming_bulk(client, actions(index, path), chunk_size=1000):
        if not ok:
            raise SystemExit(f"refused: {item}")
        n += 1
    print(json.dumps({"documents": n, "seconds": time.monotonic() - start}))


if __name__ == "__main__":
    main()
