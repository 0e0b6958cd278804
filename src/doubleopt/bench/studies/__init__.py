"""The studies that ``doubleopt bench NAME`` runs: every module ``doubleopt.bench.studies.NAME`` with a
``main(argv)`` is the study ``NAME``. Each compares doubleopt with a baseline (a plain PyTorch loop, SciPy, or a
third-party library such as qpth, cvxpylayers, POT, Stable-Baselines3 or TorchOpt, from the ``bench`` extra:
``pip install 'doubleopt[bench]'``) under one timing convention (:mod:`doubleopt.bench`) and writes its results
(JSON, a markdown table and a plot) under ``--out``. Run one with ``doubleopt bench NAME -- --quick``; list them
with ``doubleopt bench``. This package imports none of them: a study is imported when it is run.
"""
