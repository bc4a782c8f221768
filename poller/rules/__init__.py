"""The pure rules: what a poll outcome means for a watch (`polling.decide`) and what to do
with the outbox rows claimed for a channel (`delivery.plan`).

Nothing here does I/O or reads a clock: the engines (`poller.engine`) pass the time and a
random source in and carry out the decisions. Both are tested with hypothesis properties.
"""
