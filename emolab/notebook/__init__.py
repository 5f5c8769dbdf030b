"""Notebook helpers: the steering panel (``widgets``), figures of bundles and eval reports (``plots``,
``effect_plots``, one pure-Figure style), and ``use_project_root`` for paths relative to the repository."""

from emolab.notebook.project import use_project_root

__all__ = ["use_project_root"]
