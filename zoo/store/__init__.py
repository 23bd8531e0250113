"""Owning a zoo on disk: the format (shards + manifest), integrity checks, locks and the reader.

``zoo.store.X`` names the format's API (:mod:`zoo.store.format`) and, for code written before
the atomic-file helpers moved to :mod:`zoo.fs`, those helpers too.
"""
from ..fs import (TMP_SUFFIX, atomic_path, check_writable_dir, is_temp, json_default, remove_stale_temp,
                  write_json, write_text)
from .format import (FORMAT, MANIFEST, METRICS, PLAN, SCHEMA_VERSION, SHARD_FORMAT, SUPPORTED_SCHEMAS,
                     ShardContent, build_manifest, check_replaceable, concat_contents, make_splits, metric_column,
                     open_shard, owned_by_metazoo, read_manifest, read_shard, read_table, recorded_sha,
                     shard_entry, shard_ids, shard_name, verify, verify_isolated, versions,
                     write_shard, write_zoo)
from .integrity import ShardVerifier, check_manifest, sha256_file
from .probe import probe_shard

__all__ = ["FORMAT", "MANIFEST", "METRICS", "PLAN", "SCHEMA_VERSION", "SHARD_FORMAT", "SUPPORTED_SCHEMAS",
           "TMP_SUFFIX", "ShardContent", "ShardVerifier", "atomic_path", "build_manifest", "check_manifest",
           "check_replaceable", "check_writable_dir", "concat_contents", "is_temp", "json_default", "make_splits",
           "metric_column", "open_shard", "owned_by_metazoo", "probe_shard", "read_manifest", "read_shard",
           "read_table", "recorded_sha", "remove_stale_temp", "sha256_file", "shard_entry", "shard_ids",
           "shard_name", "verify", "verify_isolated", "versions", "write_json", "write_shard",
           "write_text", "write_zoo"]
