"""Making zoos: the spec, the training images, the group trainers, and the run that writes shards.

``zoo.generate.generate`` (:mod:`zoo.generate.run`) is the entry point; ``zoo generate`` calls it.
Within: ``images`` and ``spec`` under ``grouped`` and ``train`` (and ``train_smallcnn``), under
``run``; ``distributed`` spreads a run over a Ray cluster; ``hpcheck`` compares a zoo's table
with a spec; ``synthetic`` writes tiny zoos with a known answer for the metanet tests.
"""
from .run import (DEVICE, GROUP_TRAINERS, PARTS, PLAN_FORMAT, auto_group_size, check_device, check_out_dir,
                  ensure_plan, estimate_bytes, fixed_arrays, generate, model_bar, plan_groups, plan_queues,
                  progress_of, read_json, remove_zoo, results_to_content, write_manifest)

__all__ = ["DEVICE", "GROUP_TRAINERS", "PARTS", "PLAN_FORMAT", "auto_group_size", "check_device", "check_out_dir",
           "ensure_plan", "estimate_bytes", "fixed_arrays", "generate", "model_bar", "plan_groups", "plan_queues",
           "progress_of", "read_json", "remove_zoo", "results_to_content", "write_manifest"]
