"""A plain-text table for the command line: columns padded to their widest cell, a rule under the head.

    from edge.texttable import text_table
    print(text_table([("profile", "RAM"), ("pixel_7", "8 GB")]))
"""


def text_table(rows: list[tuple]) -> str:
    """`rows[0]` is the head; every cell is shown with str()."""
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
