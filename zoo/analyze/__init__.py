"""Loss-landscape analyses over a zoo: linear mode connectivity (LMC), Git Re-Basin weight
matching and monotonic linear interpolation (MLI), after Lim et al. (NeurIPS 2024).

- :mod:`zoo.analyze.metrics`: pure numpy curve metrics (barriers, MLI statistics) and the
  bootstrap interval the reports use;
- :mod:`zoo.analyze.align`: permutation specs of our ResNets and smallcnns, and weight matching;
- :mod:`zoo.analyze.interp`: nets along a line in weight space, evaluated many at a time;
- :mod:`zoo.analyze.pairs`: which models of a zoo form pairs, and loading them;
- :mod:`zoo.analyze.report`: tables, CSV/JSON/markdown and plots;
- :mod:`zoo.analyze.cli`: ``zoo analyze lmc | align | mli``.
"""
