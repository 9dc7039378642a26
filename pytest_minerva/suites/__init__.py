"""The regression suite: what every backend must compute, run across the model x format x backend matrix.

It ships inside the package, so an engine team runs it, from any directory, with::

    python -m pytest --pyargs pytest_minerva.suites --model smollm2-135m

Its data (prompts, tolerances, goldens, expectations, the tokenizer corpus) comes from the
installed package too (:func:`pytest_minerva.models.catalog.fixtures_dir`).
"""
