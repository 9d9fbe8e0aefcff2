"""A perturbation harness after Sieve (OSDI '22, "Automatic Reliability Testing for Cluster
Management Controllers"): the reconciler's view of the cluster perturbed at chosen points, on
the fault proxy between it and the real local API server, and each run's end compared with an
unperturbed reference run's (a differential oracle).

- workload.py: the reference workload, step by step, each step settled before the next;
- trace.py: what a run's reconciler wrote and saw (from a recording proxy), keyed alike in
  every run;
- points.py: the points of a reference trace (`kind@key`) and what each kind means;
- perturb.py: how each kind perturbs the view, on the proxy;
- oracle.py: what every run must end with;
- run.py: one run, reference or perturbed;
- __main__.py: `make sieve`, every point.

`make test` runs a fixed sample of each kind (tests/e2e/test_sieve.py).
"""
