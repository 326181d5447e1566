"""The one template environment: kpt's templates are package data.

Shell scripts, the domU config, the cover letter and the HTML report all come
from kpatch_tool/templates (importlib.resources through jinja's PackageLoader),
so an installed wheel renders them as an editable checkout does. Undefined
names are errors, not empty strings: a missing variable in an init script would
otherwise become a silently wrong check. The HTML report is the exception on
both counts: it is autoescaped, and it renders runs that stopped early, whose
manifest lacks the later stages' fields (`lenient`).
"""

from __future__ import annotations

import functools
import shlex

import jinja2


@functools.cache
def env(lenient: bool = False) -> jinja2.Environment:
    e = jinja2.Environment(loader=jinja2.PackageLoader("kpatch_tool", "templates"),
                           undefined=jinja2.Undefined if lenient else jinja2.StrictUndefined,
                           keep_trailing_newline=True,
                           autoescape=jinja2.select_autoescape(enabled_extensions=("html.j2",),
                                                               default_for_string=False))
    e.filters["shquote"] = lambda s: shlex.quote(str(s))
    return e


def render(name: str, **values) -> str:
    return env().get_template(name).render(**values)
