"""Functions whose source lines are easy to get wrong: tests/test_source.py compares what
memsleuth reads for each (and for every code object inside) with inspect.getsourcelines. Never
run, only compiled."""

import functools


def decorator(*args, **kwargs):
    return lambda f: f


@decorator
def decorated():
    return 1


@decorator(1,
           key="value")
@decorator
def stacked_multiline_decorators():
    return 2


@decorator(lambda: (1,
                    2))
def lambda_in_decorator():
    return 3


def multiline_signature(a,
                        b=(1, 2),
                        *,
                        c="def f():"):
    return a, b, c


def trailing_comments():
    x = 1
    return x
    # a comment at the body's indentation belongs to the function

        # and a deeper one


# a comment at column 0 does not


def comment_below_body_after_column_zero():
    return 1
# column 0 first
    # then the body's indentation: still the function's


def closing_bracket_alone():
    return (
        1,
        2
    )


def backslash_continuation():
    total = 1 + \
        2
    return total + \
        3


def string_spanning_lines():
    text = """
def not_a_function():
    # nor a comment
)"""
    return text


def string_with_backslash_newline():
    s = "one \
two"
    return s


def brackets_and_hashes_in_strings():
    a = ")]} # not a comment"
    b = '(\'[{'
    c = r"\""
    return a, b, c  # ) a comment with a bracket


def nested_functions():
    def inner(a):
        def innermost():
            return a
        return innermost

    class Local:
        def method(self):
            return inner
    return Local


class Methods:
    def method(self):
        return self

    @staticmethod
    def static():
        return 1

    @classmethod
    def klass(cls):
        return cls

    @property
    def prop(self):
        return 2

    @prop.setter
    def prop(self, value):
        pass

    async def coroutine(self):
        return 3

    async def async_generator(self):
        yield 4

    def generator(self):
        yield 5
        # last line is a comment


def one_liner(): return 6
# a comment after a one-line function


def one_liner_followed_by_code(): return 7
one_liner_value = one_liner_followed_by_code()


lambdas = [lambda: 8, lambda x: (x,
                                 x)]
on_its_own_line = decorator(
    lambda y: y
)
keyed = dict(a=lambda: 9,
             b=lambda: (10,
                        11))


def comprehensions():
    squares = [x * x
               for x in range(3)]
    evens = {x for x in range(4) if not x % 2}
    return squares, evens, (y for y in squares)


def matrix_at(a, b):
    a @= b
    return a @ b


@functools.lru_cache(maxsize=None)
def cached(n):
    return n


def tabs():
	if True:
		return 12
	# tab-indented comment


def last_statement_is_a_call():
    print(1,
          2,
          )


def ends_with_a_nested_block():
    for i in range(2):
        if i:
            pass
        else:
            continue


def docstring_only():
    """Just a docstring,
    on two lines."""


def trailing_blank_lines():
    return 13



def after_blank_lines():
    return 14
