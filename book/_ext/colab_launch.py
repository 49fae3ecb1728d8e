"""A Sphinx extension: the rocket button's Colab link opens the Colab edition.

sphinx-book-theme builds the Colab link of a page from ``repository.url`` and
the page's path, ``book/NN_name.ipynb``: the paired notebook, whose MyST
directives and roles Colab shows as raw text. This handler runs after the
theme's (``html-page-context``, priority 502 > the theme's 501) and points
that link at ``colab/NN_name.ipynb``, the notebook that
``python -m cccl_lite colab-edition`` makes from the same page
(:mod:`cccl_lite.book.editions`), through :func:`cccl_lite.book.editions.colab_url`,
the same derivation from ``_config.yml`` the notebooks' own links use. A
notebook page with no Colab edition loses its Colab button rather than open
raw MyST. Loaded by ``_config.yml`` (``sphinx.local_extensions``).
"""

from __future__ import annotations

from pathlib import Path

from cccl_lite.book.editions import COLAB_DIR, colab_url, repository


def retarget_colab(app, pagename, templatename, context, doctree):
    """Point the Colab launch button of ``pagename`` at ``colab/<name>.ipynb``."""
    root = Path(app.srcdir)
    groups = context.get("header_buttons", [])
    for group in groups:
        if group.get("label") != "launch-buttons":
            continue
        buttons = []
        for button in group.get("buttons", []):
            if button.get("text") == "Colab":
                name = f"{Path(pagename).name}.ipynb"
                if not (root / COLAB_DIR / name).is_file():
                    continue  # no Colab edition of this page: no button
                url, branch = repository(root)
                button["url"] = colab_url(url, f"{COLAB_DIR}/{name}", branch)
            buttons.append(button)
        group["buttons"] = buttons
    groups[:] = [g for g in groups if g.get("label") != "launch-buttons" or g["buttons"]]


def setup(app):
    app.connect("html-page-context", retarget_colab, priority=502)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
