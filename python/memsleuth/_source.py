"""A profiled function's source lines, as ``inspect.getsourcelines`` gives them, without inspect.

inspect brings ast, dis, tokenize, re and enum with it: about 2 MiB that would stay in the
profiled program's RSS for its whole run (docs/design.md, "The books live in the sink"). This
module reads the file as linecache does and finds where the function ends by inspect's own rules
(its ``BlockFinder``, ported below), fed by a scanner that produces only what those rules look
at: names, brackets, strings, comments, line ends and indentation. Where linecache holds the
source already, or the file may read differently (an encoding declaration, a file not on disk),
it asks linecache, as inspect does.
"""

import io
import sys
import types

_UTF8_BOM = b"\xef\xbb\xbf"

# Kinds of token, as tokenize names them; names, numbers, strings and operators are all OTHER.
OTHER, NEWLINE, NL, COMMENT, INDENT, DEDENT = range(6)

#: 3.9's BlockFinder tracks decorator arguments by their brackets; 3.10 dropped that.
_DECORATOR_BRACKETS = sys.version_info < (3, 10)
#: From 3.12 tokenize is CPython's own tokenizer, for which an unmatched closing bracket closes
#: nothing; before, tokenize counted it, and the brackets open went below zero.
_CLAMPS_UNMATCHED = sys.version_info >= (3, 12)
#: Before 3.13 inspect moves back from ``co_firstlineno`` to the nearest line that looks like the
#: start of a definition.
_SEEKS_DEFINITION_LINE = sys.version_info < (3, 13)


def source_lines(func):
    """``inspect.getsourcelines(func)`` for a function, without following ``__wrapped__`` (the
    lines are those of the code object that runs): its lines, each with its line end, and the
    number of the first; None when the source cannot be read."""
    func = getattr(func, "__func__", func)  # a bound method
    if not isinstance(func, types.FunctionType):
        return None
    code = func.__code__
    lines = file_lines(code.co_filename, func.__globals__)
    first = code.co_firstlineno - 1
    if not lines or first >= len(lines):
        return None
    if _SEEKS_DEFINITION_LINE:
        while first > 0 and not _looks_like_definition(lines[first]):
            first -= 1
    return lines[first:first + block_length(lines, first)], first + 1


def file_lines(filename, module_globals):
    """The file's lines as ``linecache.getlines(filename, module_globals)`` gives them: from
    linecache where it holds the source (IPython's cells, ``memsleuth run -c``), else read here,
    again for each function: linecache's cache would keep the whole file in the program's RSS."""
    linecache = sys.modules.get("linecache")
    if linecache is None or filename not in linecache.cache:
        if filename.startswith("<") and filename.endswith(">"):
            return []  # only linecache could have held such a source
        lines = read_file(filename)
        if lines is not None:
            return lines
        import linecache
    linecache.checkcache(filename)
    return linecache.getlines(filename, module_globals)


def read_file(filename):
    """The file's lines as linecache reads them (tokenize.open: UTF-8 after any byte order mark,
    universal newlines), or None where that reading may differ from linecache's: a file that
    declares an encoding (the word "coding" in its first two lines), or that cannot be read or
    decoded."""
    try:
        with open(filename, "rb") as f:
            data = f.read()
    except OSError:
        return None
    if b"coding" in b"\n".join(data.split(b"\n", 2)[:2]):
        return None
    if data.startswith(_UTF8_BOM):
        data = data[len(_UTF8_BOM):]
    try:
        lines = io.TextIOWrapper(io.BytesIO(data), encoding="utf-8").readlines()
    except UnicodeDecodeError:
        return None
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    return lines


def _is_word(char):
    return char.isalnum() or char == "_"


def _looks_like_definition(line):
    """inspect's ``^(\\s*def\\s)|(\\s*async\\s+def\\s)|(.*(?<!\\w)lambda(:|\\s))|^(\\s*@)``."""
    rest = line.lstrip()
    if rest.startswith("@") or (rest.startswith("def") and rest[3:4].isspace()):
        return True
    if rest.startswith("async") and rest[5:6].isspace():
        after = rest[5:].lstrip()
        if after.startswith("def") and after[3:4].isspace():
            return True
    at = line.find("lambda")
    while at >= 0:
        following = line[at + 6:at + 7]
        if (at == 0 or not _is_word(line[at - 1])) and (following == ":" or following.isspace()):
            return True
        at = line.find("lambda", at + 1)
    return False


class _EndOfBlock(Exception):
    pass


class _BlockFinder:
    """inspect.BlockFinder's rules (3.9-3.13), fed ``(kind, text, row, col)``: ``col`` is where a
    comment starts and where an indent ends, the only columns the rules read."""

    def __init__(self):
        self.indent = 0
        self.islambda = False
        self.started = False
        self.passline = False
        self.indecorator = False
        self.decoratorhasargs = False
        self.last = 1
        self.body_col0 = None

    def eat(self, kind, text, row, col):
        if not self.started and not self.indecorator:
            if text == "@":
                self.indecorator = True
            elif text in ("def", "class", "lambda"):
                if text == "lambda":
                    self.islambda = True
                self.started = True
            self.passline = True
        elif _DECORATOR_BRACKETS and text == "(":
            if self.indecorator:
                self.decoratorhasargs = True
        elif _DECORATOR_BRACKETS and text == ")":
            if self.indecorator:
                self.indecorator = False
                self.decoratorhasargs = False
        elif kind == NEWLINE:
            self.passline = False
            self.last = row
            if self.islambda:
                raise _EndOfBlock
            if self.indecorator and not self.decoratorhasargs:
                self.indecorator = False
        elif self.passline:
            pass
        elif kind == INDENT:
            if self.body_col0 is None and self.started:
                self.body_col0 = col
            self.indent += 1
            self.passline = True
        elif kind == DEDENT:
            self.indent -= 1
            if self.indent <= 0:
                raise _EndOfBlock
        elif kind == COMMENT:
            if self.body_col0 is not None and col >= self.body_col0:
                self.last = row
        elif self.indent == 0 and kind != NL:
            raise _EndOfBlock


def block_length(lines, start):
    """How many lines from ``lines[start]`` inspect's ``getblock`` takes."""
    finder = _BlockFinder()
    try:
        for token in _tokens(lines, start):
            finder.eat(*token)
    except _EndOfBlock:
        pass
    return finder.last


def _string_end(line, pos, quote):
    """Where the string whose closing quote is ``quote`` ends in ``line`` from ``pos`` (just past
    the quote), or -1 if it goes on past the line."""
    while True:
        found = line.find(quote, pos)
        escape = line.find("\\", pos)
        if found < 0:
            return -1
        if 0 <= escape < found:
            pos = escape + 2  # an escaped character, in raw strings too
            continue
        return found + len(quote)


def _tokens(lines, start):
    """The tokens ``tokenize.generate_tokens`` makes of ``lines[start:]``, as far as BlockFinder
    tells them apart, up to the end of the file or an inconsistent dedent (where tokenize raises
    the IndentationError that ends inspect's block too). Rows count from 1."""
    indents = [0]
    depth = 0  # brackets open (below zero: closed more than opened, before 3.12)
    continued = False  # a backslash joined the next line
    string_quote = None  # the closing quote of a string that goes on past a line end
    for row, line in enumerate(lines[start:], 1):
        pos, end = 0, len(line)
        if string_quote is not None:
            pos = _string_end(line, 0, string_quote)
            if pos < 0:
                continue
            string_quote = None
            yield OTHER, None, row, 0
        elif depth == 0 and not continued:
            column = 0
            while pos < end:
                char = line[pos]
                if char == " ":
                    column += 1
                elif char == "\t":
                    column = (column // 8 + 1) * 8
                elif char == "\f":
                    column = 0
                else:
                    break
                pos += 1
            if pos == end or line[pos] in "#\r\n":
                if pos < end and line[pos] == "#":
                    yield COMMENT, None, row, pos
                yield NL, None, row, 0
                continue
            if column > indents[-1]:
                indents.append(column)
                yield INDENT, None, row, pos
            while column < indents[-1]:
                if column not in indents:
                    return
                indents.pop()
                yield DEDENT, None, row, 0
        continued = False
        while pos < end:
            char = line[pos]
            if char in " \t\f":
                pos += 1
                continue
            if char in "\r\n":
                break
            if char == "#":
                yield COMMENT, None, row, pos
                break
            if char == "\\" and line[pos + 1:pos + 2] in ("\n", "\r"):
                continued = True
                break
            if char in "\"'":
                quote = line[pos:pos + 3] if line[pos:pos + 3] in ('"""', "'''") else char
                close = _string_end(line, pos + len(quote), quote)
                if close >= 0:
                    yield OTHER, None, row, pos
                    pos = close
                elif len(quote) == 3 or line.rstrip("\r\n").endswith("\\"):
                    string_quote = quote
                    break
                else:  # unterminated: tokenize marks the quote an error and goes on
                    yield OTHER, None, row, pos
                    pos += 1
                continue
            if _is_word(char):
                word_end = pos + 1
                while word_end < end and _is_word(line[word_end]):
                    word_end += 1
                yield OTHER, line[pos:word_end], row, pos
                pos = word_end
                continue
            if char in "([{":
                depth += 1
            elif char in ")]}" and (depth > 0 or not _CLAMPS_UNMATCHED):
                depth -= 1
            # '@=' is one operator, not the decorator's '@'.
            text = "@=" if line[pos:pos + 2] == "@=" else char
            yield OTHER, text, row, pos
            pos += len(text)
        if string_quote is None and not continued:
            yield (NL if depth > 0 else NEWLINE), None, row, 0
