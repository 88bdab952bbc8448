"""Everything shown to a person. ``format`` (numbers and text, pure), ``rows`` (reports and
recommendations as plain rows: the single source of all renderers), ``tables`` (rich terminal
tables), ``html`` (notebook display) and ``plot`` (matplotlib figures). May import: ``errors``,
``report``, ``inventory.kinds``, and ``peft.recommendation`` for types only; nothing imports
``render`` except ``cli`` and the two commented lazy notebook-display imports. rich and
matplotlib are imported inside the functions that draw.
"""
