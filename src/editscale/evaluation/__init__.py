"""Evaluation: batched NLL scoring (`scoring`), CounterFact metrics (`metrics`), fluency and drift (`fluency`)."""
