"""The life of a request, one module per step (docs/design.md, "The flow of one request"; docs/architecture.md).

    intake.py    read and check what a requester submits (before anything is written)
    claim.py     take the head of a lineage's queue; the production version it starts from
    prepare.py   the parent model and the request's training data (the parent's images, cached)
    unlearn.py   one decremental step with the one training loop (a finished step is never retrained)
    evaluate.py  the candidate judged against the base with the evaluator (evaluator.py) and its gate
    register.py  the candidate as a version in the MLflow registry
    decide.py    the gate's outcome and the approval: promote or reject
    audit.py     the erosion audit of what is in production

Plain functions over typed values (values.py) and one settings model (settings.py). The `lethe` CLI,
the Prefect tasks, the audit flow and bench/ all call these; none of it imports Prefect.
"""
