"""Functions only CPython 3.12+ can compile (PEP 701's f-strings), for tests/test_source.py."""


def nested_quotes(d):
    return f"{d["key"]} {f'{d['other'] + ")"}'}"


def multiline_fstring(value):
    text = f"""{
        value
    } and {"""
    nested
    """}"""
    return text


def comment_in_replacement_field(value):
    return f"{value  # a comment inside
    }"
