"""What the search spaces' genotype readers share: their error, and reading a genotype from a
name, a file, JSON or the original's ``Genotype(...)`` text (its arguments as literals,
``range(a, b)`` included, as the searches print it)."""
import ast
import json
import os


class GenotypeError(ValueError):
    """A genotype that cannot be read or is not a valid cell description."""


def literal(node):
    """The value of ``node``, an ast node of a genotype text's argument."""
    # range(a, b) appears in genotypes printed by the search; everything else is a literal.
    if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "range":
        nodes = range(*[ast.literal_eval(a) for a in node.args])
        if len(nodes) > 64:  # a cell has a handful of nodes; refuse before building a huge list
            raise ValueError(f"{len(nodes)} nodes in a range")
        return list(nodes)
    return ast.literal_eval(node)


def parse_spec(spec, named, fields, from_dict, expected):
    """A genotype from ``spec``: a name of ``named``, or JSON text or the original's
    ``Genotype(...)`` text (each given as text or as a file holding it). The JSON object, or the
    text's arguments by field name (``fields``), go to ``from_dict``; ``expected`` shows the text's
    form in the error."""
    if not isinstance(spec, str):
        raise GenotypeError(f"genotype spec must be a string (a file, a name or Genotype(...) "
                            f"text), got {type(spec).__name__}")
    spec = spec.strip()
    if spec in named:
        return named[spec]
    if spec.startswith(("Genotype(", "{")):
        text = spec
    elif os.path.isfile(spec):
        try:
            with open(spec, encoding="utf-8") as f:
                text = f.read().strip()
        except (OSError, UnicodeDecodeError) as e:
            raise GenotypeError(f"genotype file {spec!r} cannot be read as text: {e}") from None
    else:
        raise GenotypeError(f"genotype {spec!r} is neither a file, a known name "
                            f"({', '.join(named)}) nor Genotype(...) text")
    if text.startswith("{"):
        try:
            return from_dict(json.loads(text))
        except (json.JSONDecodeError, RecursionError) as e:
            raise GenotypeError(f"genotype JSON is malformed: {e}") from None
    try:
        values = _call_arguments(text, fields)
    except (SyntaxError, ValueError, TypeError, MemoryError, RecursionError) as e:
        # literal_eval and range() fail in all of these ways on text that is not a genotype.
        raise GenotypeError(f"genotype text is malformed: {e.__class__.__name__}: {e}; expected "
                            f"{expected}") from None
    return from_dict(values)


def _call_arguments(text, fields):
    """The arguments of the single call ``Genotype(...)`` in ``text``, by field name."""
    call = ast.parse(text, mode="eval").body
    if not (isinstance(call, ast.Call) and getattr(call.func, "id", None) == "Genotype"):
        raise ValueError("expected a single Genotype(...) call")
    if len(call.args) > len(fields):
        raise ValueError(f"{len(call.args)} positional arguments, expected at most {len(fields)}")
    if any(kw.arg is None for kw in call.keywords):
        raise ValueError("** arguments are not literals")
    values = dict(zip(fields, (literal(a) for a in call.args)))
    for kw in call.keywords:
        if kw.arg not in fields:
            raise ValueError(f"unknown argument {kw.arg} (expected {', '.join(fields)})")
        if kw.arg in values:
            raise ValueError(f"{kw.arg} given twice")
        values[kw.arg] = literal(kw.value)
    return values
