"""The bundled price snapshot: compact gzip JSON inside the package, and the command that builds it.

Build (reproducible: same inputs, same bytes; gzip mtime is zero and keys are sorted)::

    python -m jevons.prices.snapshot --openrouter-url URL --bedrock-url URL --as-of 2026-08-19
    python -m jevons.prices.snapshot --openrouter-file models.json --bedrock-dir DIR --as-of 2026-08-19

``--bedrock-dir`` is a directory laid out like the AWS price list (``region_index.<Offer>.json``
beside ``offers/v1.0/aws/...``, as in the shared sample data). The dated history
(``data/history.json``) is merged in: each historical version keeps its closed interval and
the bundled current price of that model starts where the history ends.
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

from jevons.prices.model import Layer, PriceVersion

__all__ = [
    "SNAPSHOT_NAME",
    "bundled_resource",
    "dump_versions",
    "load_versions",
    "main",
    "merge_history",
    "read_bundled",
    "read_history",
]

SNAPSHOT_NAME = "bundled.json.gz"
FORMAT = 1


def _compact(version: PriceVersion) -> dict[str, Any]:
    data = version.to_dict()
    out = {k: v for k, v in data.items() if v not in (None, [], {}, "standard")}
    out.pop("layer", None)
    return out


def dump_versions(versions: Iterable[PriceVersion], *, meta: dict[str, Any] | None = None) -> bytes:
    """Deterministic gzip JSON of ``versions`` (sorted by version id)."""
    rows = sorted((_compact(v) for v in versions), key=lambda d: d["version_id"])
    doc = {"format": FORMAT, "meta": meta or {}, "versions": rows}
    raw = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    return gzip.compress(raw, compresslevel=9, mtime=0)


def load_versions(blob: bytes, *, layer: Layer) -> tuple[list[PriceVersion], dict[str, Any]]:
    doc = json.loads(gzip.decompress(blob))
    if doc.get("format") != FORMAT:
        raise ValueError(f"price snapshot format {doc.get('format')!r} is not {FORMAT}")
    return [PriceVersion.from_dict(row, layer=layer) for row in doc["versions"]], dict(doc.get("meta") or {})


def bundled_resource(name: str) -> bytes:
    return resources.files("jevons.prices").joinpath("data", name).read_bytes()


def read_bundled() -> tuple[list[PriceVersion], dict[str, Any]]:
    """The snapshot shipped in the package (layer ``BUNDLED``)."""
    return load_versions(bundled_resource(SNAPSHOT_NAME), layer=Layer.BUNDLED)


def read_history() -> list[PriceVersion]:
    doc = json.loads(bundled_resource("history.json"))
    out = []
    for row in doc["versions"]:
        row = {k: v for k, v in row.items() if k != "evidence"}
        row.setdefault("source", "history")
        row["layer"] = "bundled"
        out.append(PriceVersion.from_dict(row))
    return out


def merge_history(current: list[PriceVersion], history: list[PriceVersion]) -> list[PriceVersion]:
    """Current versions start where their model's history ends; history versions are added."""
    ends: dict[tuple[object, ...], datetime] = {}
    for h in history:
        if h.valid_to is not None:
            key = h.key
            ends[key] = max(ends.get(key, h.valid_to), h.valid_to)
    out = []
    for v in current:
        start = ends.get(v.key)
        if start is not None and v.valid_from is None:
            v = v.with_validity(start, v.valid_to)
        out.append(v)
    return out + list(history)


def _build(args: argparse.Namespace) -> list[PriceVersion]:
    import httpx

    from jevons.prices.sources import bedrock, openrouter

    as_of = datetime.fromisoformat(args.as_of).replace(tzinfo=UTC) if args.as_of else datetime.now(UTC)
    versions: list[PriceVersion] = []
    if args.openrouter_file or args.openrouter_url:
        if args.openrouter_file:
            body = json.loads(Path(args.openrouter_file).read_text())
        else:
            body = httpx.get(args.openrouter_url.rstrip("/") + openrouter.PATH, timeout=60).json()
        parsed = openrouter.parse_models(body, fetched_at=as_of, layer=Layer.BUNDLED)
        if parsed.invalid:
            raise SystemExit(f"OpenRouter: {len(parsed.invalid)} invalid prices, e.g. {parsed.invalid[0]}")
        versions.extend(parsed.versions)
    if args.bedrock_dir or args.bedrock_url:
        names = bedrock.name_map(json.loads(bundled_resource("bedrock_models.json")))
        parses: list[bedrock.OfferParse] = []
        for offer in bedrock.OFFERS:
            if args.bedrock_dir:
                root = Path(args.bedrock_dir)
                index = json.loads((root / f"region_index.{offer}.json").read_text())
                urls = bedrock.parse_region_index(index)
                docs = [json.loads((root / u.lstrip("/")).read_text()) for _, u in sorted(urls.items())]
            else:
                base = args.bedrock_url.rstrip("/")
                index = httpx.get(base + bedrock.region_index_path(offer), timeout=60).json()
                urls = bedrock.parse_region_index(index)
                docs = [httpx.get(base + u, timeout=120).json() for _, u in sorted(urls.items())]
            parses.extend(bedrock.parse_offer(doc, names) for doc in docs)
        parsed_b = bedrock.merge_offers(parses, fetched_at=as_of, layer=Layer.BUNDLED)
        if parsed_b.invalid:
            raise SystemExit(f"Bedrock: {len(parsed_b.invalid)} invalid prices, e.g. {parsed_b.invalid[0]}")
        versions.extend(parsed_b.versions)
    return merge_history(versions, read_history())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jevons.prices.snapshot", description=__doc__)
    parser.add_argument("--openrouter-url")
    parser.add_argument("--openrouter-file")
    parser.add_argument("--bedrock-url")
    parser.add_argument("--bedrock-dir")
    parser.add_argument("--as-of", help="date of the source data (ISO); default now")
    parser.add_argument(
        "--out", default=str(Path(__file__).with_name("data") / SNAPSHOT_NAME), help="output file"
    )
    args = parser.parse_args(argv)
    versions = _build(args)
    meta = {"as_of": args.as_of, "sources": sorted({v.source for v in versions})}
    Path(args.out).write_bytes(dump_versions(versions, meta=meta))
    print(f"wrote {len(versions)} price versions to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
