"""Book helpers: what the chapters and instructors call.

``notebook`` (data paths, results files, glue), ``visualize``, ``figures``
and ``plots`` (what the chapters draw), ``exercises`` (checkers and hidden
solutions), ``student`` and ``editions`` (the student and Colab editions),
``grade`` (grading students' notebooks) and ``course`` (the teaching page's
session plan and measured minutes). Not to be confused with the repository's
``book/`` folder of chapters, which imports these.
"""
