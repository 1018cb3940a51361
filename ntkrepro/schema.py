"""The settings a figure accepts and their types, read from its composed `figure.paper` block.

Each key takes the type of its paper value: bool, int, float (an int is accepted), str, a list of
those, or a nested mapping.  A key whose paper value is null declares its type in `KEY_TYPES`.  A key
missing at a nested level inherits the type of the same key at an enclosing level (a panel's `steps`
is the top-level `steps`), except inside a mapping that holds only mappings (a set of named panels).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache

from ntkrepro.errors import ConfigError
from ntkrepro.registry import CONF_DIR, figure_ids

_WORDS = {"bool": ("true or false", "booleans"), "int": ("an integer", "integers"),
          "float": ("a float", "floats"), "str": ("a string", "strings"), "any": ("a value", "values")}


@dataclass(frozen=True)
class Type:
    """The type of one setting: scalar kinds accepted, list or not, null allowed or not."""
    kinds: tuple[str, ...]        # "bool", "int", "float" (accepts int), "str", "any"
    is_list: bool = False
    optional: bool = False
    positive: bool = False        # a positive integer (or list of them) in the paper: stays >= 1
    length: int | None = None     # a list of fixed length (a claim's interval [lo, hi])

    def accepts(self, value) -> bool:
        if value is None:
            return self.optional
        if self.kinds == ("any",) and not self.is_list:
            return True
        if self.is_list:
            return (isinstance(value, list) and all(_is(v, self.kinds) for v in value)
                    and self.length in (None, len(value)))
        return _is(value, self.kinds)

    def describe(self) -> str:
        words = [_WORDS[k][self.is_list] for k in self.kinds]
        text = (f"a list of {self.length if self.length else ''} ".replace("  ", " ") if self.is_list else "") \
            + " or ".join(words)
        return f"null or {text}" if self.optional else text


def _is(value, kinds) -> bool:
    if isinstance(value, (list, dict)):
        return False
    if isinstance(value, bool):
        return "bool" in kinds or "any" in kinds
    if isinstance(value, int):
        return bool({"int", "float", "any"} & set(kinds))
    if isinstance(value, float):
        return bool({"float", "any"} & set(kinds))
    return "any" in kinds or (isinstance(value, str) and "str" in kinds)


# Keys whose paper value may be null: their type cannot be read from the paper, so it is declared here.
KEY_TYPES = {
    "classes": Type(("str", "int"), is_list=True, optional=True),     # null: all classes
    "ode_width": Type(("int",), optional=True, positive=True),        # null: the trained widths
    "batch_size": Type(("int",), optional=True, positive=True),       # null: full batch
    "depth": Type(("int",), optional=True, positive=True),            # lee-4: null, the WRN blocks decide
    "lr": Type(("float", "int"), optional=True),           # lee-s5 panes: null, lr_fraction decides
    "lr_fraction": Type(("float", "int"), optional=True),  # lee-s5: null, a fixed lr
}


UNDECLARED = Type(("any",), optional=True)  # a null paper value missing from KEY_TYPES: anything goes


def _kind(value) -> str:
    for kind, cls in (("bool", bool), ("int", int), ("float", float), ("str", str)):
        if isinstance(value, cls):
            return kind
    return "any"


def _positive_int(values) -> bool:
    return bool(values) and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in values)


def infer(key: str, value, fixed_length: bool = False):
    """The type of `key` from its paper value: a `Type`, or a dict of types for a mapping.  Lists
    inside a `claims` mapping (tolerance intervals) keep the length of their paper value."""
    if isinstance(value, dict):
        fixed = fixed_length or key == "claims"
        tree = {str(k): infer(str(k), v, fixed) for k, v in value.items()}
        return _siblings_nullable(tree) if tree and all(isinstance(v, dict) for v in tree.values()) else tree
    if value is None:
        return KEY_TYPES.get(key, UNDECLARED)
    if not isinstance(value, list):
        return Type((_kind(value),), positive=_positive_int([value]))
    kinds = tuple(dict.fromkeys(_kind(v) for v in value)) or ("any",)
    if set(kinds) == {"int", "float"}:
        kinds = ("float",)
    return Type(kinds, is_list=True, positive=_positive_int(value), length=len(value) if fixed_length else None)


def _siblings_nullable(panels: dict) -> dict:
    """In a set of named panels, a key that is null in one panel may be null in every panel (lee-s5's
    panes set either `lr` or `lr_fraction`, the other null): its types there become optional."""
    nullable = {k for panel in panels.values() for k, t in panel.items() if isinstance(t, Type) and t.optional}
    return {name: {k: replace(t, optional=True) if k in nullable and isinstance(t, Type) else t
                   for k, t in panel.items()} for name, panel in panels.items()}


def lookup(tree: dict, parts) -> Type | dict | None:
    """The type at the dotted path `parts` of `tree`, None for a path that names no setting."""
    chain, node = [tree], tree
    for i, part in enumerate(parts):
        if not isinstance(node, dict):
            return None
        inherit = not node or not all(isinstance(v, dict) for v in node.values())
        scopes = reversed(chain) if inherit else [node]
        node = next((scope[part] for scope in scopes if part in scope), None)
        if node is None:
            return None
        if isinstance(node, dict):
            chain.append(node)
    return node


def paths(tree: dict, prefix: str) -> list[str]:
    """Every setting of `tree` as a full dotted path under `prefix`."""
    out = []
    for key, node in tree.items():
        path = f"{prefix}.{key}"
        out += paths(node, path) if isinstance(node, dict) and node else [path]
    return out


def check_type(name: str, spec: Type, value) -> None:
    if not spec.accepts(value):
        raise ConfigError(f"{name} must be {spec.describe()}, got {value!r}")


@lru_cache(maxsize=None)
def _figure_paper(figure_id: str, groups: tuple[str, ...]):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    overrides = [f"figure={figure_id}", *groups]
    if GlobalHydra.instance().is_initialized():  # inside a Hydra app: its own config search path
        cfg = compose("config", overrides=overrides)
    else:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose("config", overrides=overrides)
    return OmegaConf.to_container(cfg.figure.get("paper") or {}, resolve=True)


def figure_paper(figure_id: str, groups=()) -> dict:
    """The composed paper block of a registered figure ({} for an unknown id), with the config group
    choices `groups` (e.g. `task@figure.paper.task=mnist`) applied."""
    return _figure_paper(figure_id, tuple(groups)) if figure_id in figure_ids() else {}


def figure_schema(figure_id: str, groups=()) -> dict:
    """The type tree of a figure's settings ({} for an unknown id)."""
    return infer("paper", figure_paper(figure_id, groups)) or {}


def group_options(group: str) -> list[str] | None:
    """The options of a config group under conf/ (None if `group` is not one)."""
    folder = CONF_DIR / group
    return sorted(p.stem for p in folder.glob("*.yaml")) if group and folder.is_dir() else None
