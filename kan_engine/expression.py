"""Formulas the user types (`--set data.function="exp(sin(pi*x1) + x2**2)"`), read without running.

A formula is text from someone else as often as not (a shared preset), so it is never evaluated
as Python: `ast.parse` reads it and an explicit whitelist of node kinds turns the tree into our own
small tree (`expression_tree`), whose values come from closures calling NumPy ufuncs. Everything
outside the whitelist (attributes, subscripts, other calls, keywords, lambdas, comparisons...) is
refused with one line naming what was found and where.

The work is bounded before anything recurses: the text's length, then an iterative walk that
counts nodes and nesting depth. `ast.parse` itself gives up on very deep input with SyntaxError
("too many nested parentheses"), MemoryError or RecursionError; all three become a refusal.
Only ASCII is accepted: Python folds look-alike letters (`ｓｉｎ` is `sin` to it), so a formula
that reads one way on screen could mean another.
"""

from __future__ import annotations

import ast
import re
import warnings

import numpy as np

from kan_engine.errors import ConfigError
from kan_engine.expression_tree import CONSTANTS, FUNCTIONS, Expression, Node, Num, Op, Var
from kan_engine.untrusted import printable, short, short_repr

__all__ = ["ALIASES", "EXAMPLE", "Expression", "FUNCTIONS", "MAX_LENGTH", "parse"]

MAX_LENGTH = 1000  # characters: config.EXPRESSION_MAX, so a --set value is never cut shorter here
MAX_NODES = 1000  # more than a 1000-character formula of x1, numbers and operators can hold
MAX_DEPTH = 100  # nesting: the KAN paper's formulas need under 10; evaluation recurses this deep
MAX_VARIABLE = 100  # x1 ... x100
ALIASES = {"asin": "arcsin", "acos": "arccos", "atan": "arctan"}  # SymPy's and C's spellings
_BINARY: dict[type[ast.operator], str] = {
    ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.Pow: "**",
}  # fmt: skip
_FOREIGN_OPERATORS = {
    ast.FloorDiv: "//", ast.Mod: "%", ast.MatMult: "@", ast.LShift: "<<", ast.RShift: ">>",
    ast.BitAnd: "&", ast.BitOr: "|", ast.BitXor: "^ (write ** for a power)",
    ast.Not: "not", ast.Invert: "~",
}  # fmt: skip
# what a refused node is, in the user's words; anything else is named by its ast class
_KINDS = {
    ast.Subscript: "a subscript [...]", ast.Lambda: "a lambda", ast.Compare: "a comparison",
    ast.IfExp: "a conditional (... if ... else ...)", ast.BoolOp: "and / or",
    ast.JoinedStr: "an f-string", ast.NamedExpr: "an assignment (:=)",
    ast.Starred: "a starred argument (*)", ast.List: "a list", ast.Tuple: "a tuple",
    ast.Set: "a set", ast.Dict: "a dict", ast.ListComp: "a comprehension",
    ast.SetComp: "a comprehension", ast.DictComp: "a comprehension",
    ast.GeneratorExp: "a generator",
}  # fmt: skip
# parts of a node that are not sub-expressions: not counted, not nested into
_LEAVES = (ast.expr_context, ast.operator, ast.unaryop, ast.cmpop, ast.boolop)
_VARIABLE = re.compile(r"x([0-9]+)")
_NAMES_HELP = f"variables are x1, x2, ... x{MAX_VARIABLE}, constants pi and e"
_HELP = f"; allowed: numbers, x1..x{MAX_VARIABLE}, pi, e, + - * / **, {' '.join(FUNCTIONS)}"
EXAMPLE = "exp(sin(pi*x1) + x2**2)"


class _Refused(Exception):
    """Why a formula is refused; `parse` turns it into the ConfigError of its key."""


def parse(text: str, *, source: str = "", key: str = "data.function") -> Expression:
    """The formula in `text`, checked; ConfigError(source, key, reason) naming what is refused."""
    text = text.strip()
    try:
        line = _one_line(text)
        tree = _parse(line)
        _check_size(tree)
        builder = _Builder(line)
        root = builder.build(tree.body)
    except _Refused as exc:
        raise ConfigError(source, key, str(exc)) from None
    return Expression(text, builder.arity, root)


_WHITESPACE = str.maketrans("\t\n\r", "   ")


def _one_line(text: str) -> str:
    """`text` with tabs and line breaks as spaces: a formula may span lines (a TOML multi-line
    string) where Python wants brackets, and every place is then one column."""
    if not text:
        raise _Refused(f"is empty: write a formula in x1, x2, ... such as {EXAMPLE}")
    if len(text) > MAX_LENGTH:
        raise _Refused(f"is {len(text)} characters long (at most {MAX_LENGTH})")
    line = text.translate(_WHITESPACE)
    for index, char in enumerate(line):
        if not (char.isascii() and char.isprintable()):
            raise _Refused(
                f"{short_repr(char)} at column {index + 1} is not allowed: "
                "a formula is plain ASCII (pi for π, * for ×)"
            )
    return line


def _parse(line: str) -> ast.Expression:
    with warnings.catch_warnings():
        # SyntaxWarning / DeprecationWarning about what the whitelist refuses anyway
        warnings.simplefilter("ignore")
        try:
            return ast.parse(line, mode="eval")
        except SyntaxError as exc:
            offset = exc.offset or 0
            where = f"column {offset}" if 0 < offset <= len(line) else "the end"
            raise _Refused(f"is not a formula: {printable(exc.msg)} at {where}") from None
        except (MemoryError, RecursionError):  # the parser's own stack, on absurd nesting
            raise _Refused(f"is nested more than {MAX_DEPTH} levels deep") from None


def _check_size(tree: ast.Expression) -> None:
    """Count nodes and depth without recursing, before anything else recurses into the tree."""
    stack: list[tuple[ast.AST, int]] = [(tree.body, 1)]
    count = 0
    while stack:
        node, depth = stack.pop()
        count += 1
        if count > MAX_NODES:
            raise _Refused(f"has more than {MAX_NODES} parts (numbers, names, operations)")
        if depth > MAX_DEPTH:
            raise _Refused(f"is nested more than {MAX_DEPTH} levels deep")
        children = ast.iter_child_nodes(node)
        stack.extend((child, depth + 1) for child in children if not isinstance(child, _LEAVES))


def _kind(node: ast.AST) -> str:
    """What a refused node is, in the user's terms."""
    if isinstance(node, ast.Attribute):
        return f"attribute access (.{short(node.attr, 30)})"
    if isinstance(node, ast.Call):
        return "the result of a call"
    if isinstance(node, ast.Constant):
        return f"the value {short_repr(node.value)}"
    return _KINDS.get(type(node), type(node).__name__)


class _Builder:
    """Turns a size-checked ast into our tree, refusing every node off the whitelist."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.arity = 0

    def _refuse(self, node: ast.AST, reason: str, *, hint: bool = False) -> _Refused:
        """`reason` at the node's place, with the node's text when it is not the whole formula
        and, for what is off the whitelist, what is on it."""
        column = getattr(node, "col_offset", 0) + 1
        segment = ast.get_source_segment(self.text, node) or self.text
        part = f" ({short(segment, 40)})" if segment != self.text else ""
        return _Refused(f"{reason} at column {column}{part}{_HELP if hint else ''}")

    def _forbidden(self, node: ast.AST, what: str) -> _Refused:
        return self._refuse(node, f"{what} is not allowed", hint=True)

    def build(self, node: ast.AST) -> Node:
        if isinstance(node, ast.Constant):
            return Num(self._number(node))
        if isinstance(node, ast.Name):
            return self._name(node)
        if isinstance(node, ast.BinOp):
            name = _BINARY.get(type(node.op))
            if name is None:
                symbol = _FOREIGN_OPERATORS.get(type(node.op), type(node.op).__name__)
                raise self._forbidden(node, f"the operator {symbol}")
            return Op(name, (self.build(node.left), self.build(node.right)))
        if isinstance(node, ast.UnaryOp):
            if isinstance(node.op, ast.UAdd):
                return self.build(node.operand)
            if isinstance(node.op, ast.USub):
                return Op("neg", (self.build(node.operand),))
            symbol = _FOREIGN_OPERATORS.get(type(node.op), type(node.op).__name__)
            raise self._forbidden(node, f"the operator {symbol}")
        if isinstance(node, ast.Call):
            return self._call(node)
        raise self._forbidden(node, _kind(node))

    def _number(self, node: ast.Constant) -> int | float:
        value = node.value
        written = short(ast.get_source_segment(self.text, node) or repr(value), 30)
        if isinstance(value, bool) or not isinstance(value, (int, float)):  # True, None, 'a', 1j
            kind = {str: "a string", bytes: "a string", complex: "a complex number"}
            what = f"{kind[type(value)]} ({written})" if type(value) in kind else written
            raise self._forbidden(node, what)
        try:
            finite = np.isfinite(float(value))
        except OverflowError:  # an int past float64
            finite = False
        if not finite:
            raise self._refuse(node, f"the number {written} is too large for float64")
        return value

    def _name(self, node: ast.Name) -> Node:
        name = node.id
        if name in CONSTANTS:
            return Num(CONSTANTS[name], name)
        match = _VARIABLE.fullmatch(name)
        if match and not match.group(1).startswith("0"):
            index = int(match.group(1))
            if index > MAX_VARIABLE:
                raise self._refuse(node, f"{short(name, 30)}: variables go up to x{MAX_VARIABLE}")
            self.arity = max(self.arity, index)
            return Var(index)
        if name in FUNCTIONS or name in ALIASES:
            raise self._refuse(node, f"{name} is a function: write {name}(...)")
        raise self._refuse(node, f"unknown name {short(name, 30)}: {_NAMES_HELP}")

    def _call(self, node: ast.Call) -> Node:
        func = node.func
        if not isinstance(func, ast.Name):
            raise self._forbidden(node, f"a call of {_kind(func)}")
        name = ALIASES.get(func.id, func.id)
        if name not in FUNCTIONS:
            what = "is not a function" if name in CONSTANTS or _VARIABLE.fullmatch(name) else ""
            reason = f"{name} {what}" if what else f"unknown function {short(name, 30)}"
            raise self._refuse(node, f"{reason} (functions: {', '.join(FUNCTIONS)})")
        if node.keywords:
            keyword = node.keywords[0].arg
            found = f"{short(keyword, 30)}=" if keyword else "**"
            raise self._refuse(node, f"{name} takes no keyword arguments (found {found})")
        if len(node.args) != 1:
            raise self._refuse(node, f"{name} takes one argument, found {len(node.args)}")
        return Op(name, (self.build(node.args[0]),))
