"""The schema of every config file: frozen pydantic models, nothing else.

One layer for the profile, the catalog and the routing file, with one base (`Frozen`: no
field may change, an unknown key fails with its name). It imports only pydantic, PyYAML and
the standard library, so validating a config never loads Ray, vLLM, Redis or an ML library;
the packages that act on a setting import it from here. `tests/unit/test_import_graph.py`
holds it to that.
"""
