"""Exit 0 when every requirement in the file (with its extras) is installed.

Checks distributions by name through importlib.metadata, so a module that
happens to import is not mistaken for the package the tests need.
Usage: python3 have_requirements.py requirements.txt [-v]
"""
import re
import sys
from importlib import metadata


def missing(line):
    """Names of the requirement's distribution and its extras' dependencies not installed."""
    m = re.match(r"\s*([A-Za-z0-9_.-]+)\s*(?:\[([^\]]*)\])?", line)
    name, extras = m.group(1), [e.strip() for e in (m.group(2) or "").split(",") if e.strip()]
    try:
        dist = metadata.distribution(name)
    except metadata.PackageNotFoundError:
        return [name]
    out = []
    for req in dist.requires or []:
        marker = req.split(";", 1)[1] if ";" in req else ""
        wanted = [e for e in extras if re.search(r"extra\s*==\s*['\"]%s['\"]" % re.escape(e), marker)]
        if not wanted:
            continue
        dep = re.match(r"\s*([A-Za-z0-9_.-]+)", req).group(1)
        try:
            metadata.distribution(dep)
        except metadata.PackageNotFoundError:
            out.append(f"{dep} (for {name}[{','.join(wanted)}])")
    return out


def main():
    lines = [l.split("#", 1)[0].strip() for l in open(sys.argv[1])]
    gone = [n for l in lines if l for n in missing(l)]
    if "-v" in sys.argv:
        print("\n".join(gone))
    sys.exit(1 if gone else 0)


if __name__ == "__main__":
    main()
