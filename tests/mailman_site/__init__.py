"""A real, running GNU Mailman site for tests (see site.py).

A package so that the test process imports ``mailman_site.site``: the name
``site`` alone is the standard library's.
"""
