"""Instrumentors for job queues: one package per library, each depending on the core only.

Each is built on :mod:`jobtrace.instrumentation`. A package's ``__init__`` never imports its library;
its ``_instrumentor`` module does, at top level, so ``opentelemetry-instrument`` skips the entry
point quietly when the library is not installed, while ``instrument_<lib>()`` says what to install.
"""
