"""The command line of ``fit|validate|test|predict``: strict YAML (a key given twice is an error), one-line errors
with a "did you mean" instead of the whole usage, and which keys the command line itself set."""

from __future__ import annotations

import difflib
import re
import sys
from pathlib import Path

import yaml
from lightning.pytorch.cli import LightningArgumentParser

from deepfake_lightning.errors import ConfigError


class _StrictLoader(yaml.SafeLoader):
    """YAML that refuses a mapping naming a key twice (PyYAML keeps the last silently: a test set given twice under
    one name would lose the first)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise ConfigError(f"{key!r} is given twice in one mapping (line {key_node.start_mark.line + 1})")
            seen.add(key)
        return super().construct_mapping(node, deep)


def check_duplicate_keys(argv: list[str]) -> None:
    """One error line for a key given twice in a ``--config`` file or in a mapping value on the command line
    (``--data.test_sets '{a: x, a: y}'``), naming where."""
    pairs = [a.split("=", 1) if "=" in a else [a, argv[i + 1] if i + 1 < len(argv) else ""] for i, a in enumerate(argv)]
    for flag, value in pairs:
        if not flag.startswith("--") or not value:
            continue
        is_file = flag == "--config" and Path(value).is_file()
        if not is_file and not value.lstrip().startswith(("{", "[")):
            continue
        try:
            yaml.load(Path(value).read_text() if is_file else value, Loader=_StrictLoader)
        except ConfigError as e:
            raise ConfigError(f"{value if is_file else flag}: {e}") from None
        except yaml.YAMLError:
            continue  # not YAML: the parser says what is wrong with it


def command_line_keys(argv: list[str]) -> list[str]:
    """Config keys set on the command line (``--model.tta_flip true``, ``--data.img_size=64``), in order."""
    return [a[2:].split("=", 1)[0] for a in argv if re.match(r"--(model|data|trainer)\.", a)]


class DeepfakeArgumentParser(LightningArgumentParser):
    """LightningCLI's parser with a one-line error: the problem, a "did you mean" for a mistyped key, and where the
    help is, instead of the whole usage. A key that only a ``--config`` file sets is named with that file."""

    argv: list[str] = []  # the command line being parsed (set by DeepfakeCLI.parse_arguments)

    def error(self, message: str, ex: Exception | None = None):
        if not self.exit_on_error:
            return super().error(message, ex)
        parser = getattr(ex, "subcommand_parser", None) or self
        prog = parser.prog.replace(" [options]", "")
        message = " ".join(str(message).split())  # jsonargparse wraps and indents its messages
        bad_class = re.search(r"Problem with given class_path '([^']+)': (.+?)(?: - |$)", message)
        if bad_class:  # instead of a page listing every Union subtype it tried
            key = re.search(r'Parser key "([^"]+)"', message)
            message = (
                f"{key.group(1) + ': ' if key else ''}class_path '{bad_class.group(1)}' cannot be used "
                f"({bad_class.group(2).strip()})"
            )
        hint = ""
        unknown = re.search(r"(?:--|key \"|option ')([A-Za-z_][\w.]*)", message)
        if unknown:
            source = _config_file_setting(DeepfakeArgumentParser.argv, unknown.group(1))
            if source:
                message = f"{source}: {message}"
            known = {o.lstrip("-") for a in parser._actions for o in a.option_strings if o.startswith("--")}
            known |= {k for k in _nested_keys(parser) if "." in k}
            close = difflib.get_close_matches(unknown.group(1), sorted(known), n=1, cutoff=0.75)
            if close and close[0] != unknown.group(1):
                hint = f" (did you mean --{close[0]}?)"
        sys.stderr.write(f"deepfake: error: {message}{hint}\n  `{prog} --help` lists every option.\n")
        sys.exit(2)


def _config_file_setting(argv: list[str], key: str) -> str | None:
    """The first ``--config`` file on ``argv`` that sets ``key`` (``data.img_size``), or None."""
    import yaml

    files = [b for a, b in zip(argv, argv[1:], strict=False) if a in ("-c", "--config")]
    files += [a.split("=", 1)[1] for a in argv if a.startswith("--config=")]
    for name in files:
        try:
            node = yaml.safe_load(Path(name).read_text())
        except (OSError, yaml.YAMLError):  # an inline JSON/YAML string, or a file the parser reports itself
            continue
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                break
            node = node[part]
        else:
            return name
    return None


def _nested_keys(parser) -> list[str]:
    try:
        return list(parser.get_defaults().keys())
    except Exception:  # defaults that cannot be resolved: the option strings still give suggestions
        return []
