"""Fuzzing: hypothesis properties and atheris (libFuzzer) harnesses over umprobe's wire-facing code.

Each `atheris_*.py` holds one *oracle*, a function of one bytes input that raises only when umprobe breaks a
promise (an exception other than the module's own error class, or a violated invariant). The hypothesis
tests (`test_fuzz_*.py`) call the same oracles with generated and structured inputs, and `test_atheris.py`
runs every harness under libFuzzer for a bounded number of inputs, as CI does:

    .venv/bin/python tests/fuzz/atheris_sip.py -runs=20000
    .venv/bin/python tests/fuzz/atheris_reflector.py -max_total_time=600    # a longer local run
"""
