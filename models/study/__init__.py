"""Reproductions of published studies, run in process: the pure pieces and the runner.

``dundee_study.run_study`` is the FEDL paper's energy study (Saputra et al.): baselines, EDL,
FEDL (IID and one client per station), clustering and evfl's federated early-exit model.
"""
