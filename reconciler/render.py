"""`python -m reconciler render -f FILE`: the KubeArmorPolicies a NimbusPolicy file requires,
without a cluster. Exit 0: no problems; 2: problems (printed on stderr); 1: unreadable input."""

from __future__ import annotations

import sys
from typing import Any, TextIO

import yaml

from .builder import desired_policies
from .model import KubeArmorPolicy, to_dict
from .parse import parse_nimbus_policy
from .problems import Problem

NO_UID_COMMENT = ("# The NimbusPolicy had no metadata.uid (it was not read from a cluster), so the\n"
                  "# ownerReference below has none; the API server requires one on create.\n")


class UnreadableInput(Exception):
    pass


def read_documents(path: str, stdin: TextIO) -> list[Any]:
    label = "stdin" if path == "-" else path
    try:
        text = stdin.read() if path == "-" else open(path, encoding="utf-8").read()  # noqa: SIM115
    except OSError as error:
        raise UnreadableInput(f"{label}: {error.strerror or error}") from error
    except UnicodeDecodeError as error:
        raise UnreadableInput(f"{label}: not UTF-8 text ({error.reason})") from error
    documents: list[Any] = []
    loader = yaml.safe_load_all(text)
    index = 0
    while True:
        try:
            document = next(loader)
        except StopIteration:
            break
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            where = f" line {mark.line + 1}" if mark is not None else ""
            problem = getattr(error, "problem", None) or str(error).splitlines()[0]
            raise UnreadableInput(f"{label}: document {index + 1}{where}: {problem}") from error
        index += 1
        if document is None:
            continue
        if isinstance(document, dict) and document.get("kind") == "List":
            documents += document.get("items") or []
        else:
            documents.append(document)
    return documents


def render_documents(documents: list[Any]) -> tuple[str, list[Problem]]:
    out: list[str] = []
    problems: list[Problem] = []
    for document in documents:
        nimbus_policy, parse_problems = parse_nimbus_policy(document)
        problems += parse_problems
        if nimbus_policy is None:
            continue
        policies, build_problems = desired_policies(nimbus_policy)
        problems += build_problems
        out += [_policy_yaml(policy) for policy in policies]
    return "---\n".join(out), problems


def _policy_yaml(policy: KubeArmorPolicy) -> str:
    text = yaml.safe_dump(to_dict(policy), sort_keys=False, width=100)
    missing_uid = any(not ref.uid for ref in policy.metadata.owner_references)
    return (NO_UID_COMMENT + text) if missing_uid else text


def main(path: str, stdout: TextIO = sys.stdout, stderr: TextIO = sys.stderr,
         stdin: TextIO = sys.stdin) -> int:
    try:
        documents = read_documents(path, stdin)
    except UnreadableInput as error:
        print(f"error: {error}", file=stderr)
        return 1
    text, problems = render_documents(documents)
    if text:
        stdout.write(text)
    for problem in problems:
        print(f"problem: {problem}", file=stderr)
    return 2 if problems else 0
