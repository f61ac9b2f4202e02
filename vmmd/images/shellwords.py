"""Docker's word rules for Dockerfile arguments (BuildKit's parser/line_parsers.go parseWords and
shell/lex.go): splitting `k=v "a b"` into words with the quotes kept, then expanding `$VAR`,
`${VAR}`, `${VAR:-default}`, `${VAR:+alt}`, `${VAR:?message}` and removing quotes and escapes.
Pure functions; errors are ValueError with a message the Dockerfile parser puts a line on."""
from __future__ import annotations

from collections.abc import Mapping

_SPECIAL = set("@*#?-$!0")


def split_words(rest: str, escape: str) -> list[str]:
    """Whitespace-separated words; quotes group and are kept, an escape keeps the next char."""
    words: list[str] = []
    word: list[str] = []
    blank_ok = False
    quote = ""
    i, n = 0, len(rest)
    in_word = False
    while i < n:
        ch = rest[i]
        if not in_word:
            if ch.isspace():
                i += 1
                continue
            in_word = True
        if quote:
            if ch == quote:
                quote = ""
            elif ch == escape and quote != "'":
                if i + 1 == n:
                    i += 1
                    continue
                word.append(ch)
                i += 1
                ch = rest[i]
            word.append(ch)
            i += 1
            continue
        if ch.isspace():
            if blank_ok or word:
                words.append("".join(word))
            word, blank_ok, in_word = [], False, False
            i += 1
            continue
        if ch in "'\"":
            quote, blank_ok = ch, True
        elif ch == escape:
            if i + 1 == n:
                i += 1
                continue
            word.append(ch)
            i += 1
            ch = rest[i]
        word.append(ch)
        i += 1
    if in_word and (blank_ok or word):
        words.append("".join(word))
    return words


class _Lexer:
    def __init__(self, text: str, env: Mapping[str, str], escape: str):
        self.s, self.i, self.env, self.esc = text, 0, env, escape

    def peek(self) -> str:
        return self.s[self.i] if self.i < len(self.s) else ""

    def next(self) -> str:
        ch = self.peek()
        self.i += 1
        return ch

    def word(self, stop: str = "") -> tuple[str, list[str]]:
        """The expanded text up to `stop` (consumed), and the same split into words the way
        ProcessWords does: whitespace from the text splits, whitespace from quotes does not."""
        out: list[str] = []
        words: list[str] = []
        cur: list[str] = []
        have = False            # a word was started (even an empty quoted one)
        while self.i < len(self.s):
            ch = self.peek()
            if stop and ch == stop:
                self.next()
                break
            if ch == "'":
                t = self.single_quote()
                out.append(t)
                cur.append(t)
                have = True
            elif ch == '"':
                t = self.double_quote()
                out.append(t)
                cur.append(t)
                have = True
            elif ch == "$":
                t = self.dollar()
                out.append(t)
                # expanded text splits into words like the shell's field splitting
                parts = t.split()
                if t and t[0].isspace() and (cur or have):
                    words.append("".join(cur))
                    cur, have = [], False
                for j, p in enumerate(parts):
                    if j:
                        words.append("".join(cur))
                        cur = []
                    cur.append(p)
                    have = True
                if t and t[-1].isspace() and (cur or have):
                    words.append("".join(cur))
                    cur, have = [], False
            else:
                self.next()
                if ch == self.esc:
                    ch = self.next()
                    if not ch:
                        break
                    cur.append(ch)
                    have = True
                elif ch.isspace():
                    if cur or have:
                        words.append("".join(cur))
                    cur, have = [], False
                else:
                    cur.append(ch)
                    have = True
                out.append(ch)
        else:
            if stop:
                raise ValueError(f"syntax error: missing '{stop}'")
        if cur or have:
            words.append("".join(cur))
        return "".join(out), words

    def single_quote(self) -> str:
        self.next()
        end = self.s.find("'", self.i)
        if end < 0:
            raise ValueError("unexpected end of statement while looking for matching single-quote")
        t = self.s[self.i:end]
        self.i = end + 1
        return t

    def double_quote(self) -> str:
        self.next()
        out: list[str] = []
        while True:
            ch = self.peek()
            if not ch:
                raise ValueError("unexpected end of statement while looking for matching "
                                 "double-quote")
            if ch == '"':
                self.next()
                return "".join(out)
            if ch == "$":
                out.append(self.dollar())
                continue
            self.next()
            if ch == self.esc:
                nxt = self.peek()
                if not nxt:
                    continue
                if nxt in ('"', "$", self.esc):
                    ch = self.next()
            out.append(ch)

    def name(self) -> str:
        start = self.i
        ch = self.peek()
        if ch.isdigit():
            while self.peek().isdigit():
                self.next()
            return self.s[start:self.i]
        if ch and ch in _SPECIAL:
            self.next()
            return ch
        while (c := self.peek()) and (c.isalnum() or c == "_"):
            self.next()
        return self.s[start:self.i]

    def dollar(self) -> str:
        self.next()
        if self.peek() != "{":
            name = self.name()
            return self.env.get(name, "") if name else "$"
        self.next()
        ch = self.peek()
        if not ch:
            raise ValueError("syntax error: missing '}'")
        if ch in "{}:":
            raise ValueError("syntax error: bad substitution")
        name = self.name()
        if not name:
            raise ValueError("syntax error: bad substitution")
        ch = self.next()
        if not ch:
            raise ValueError("syntax error: missing '}'")
        if ch == "}":
            return self.env.get(name, "")
        colon = ch == ":"
        if colon:
            ch = self.next()
        if ch not in ("-", "+", "?"):
            raise ValueError(f"unsupported modifier ({ch}) in substitution "
                             f"of {name}; vmmd supports :-, :+ and :? (with or without ':')")
        word, _ = self.word(stop="}")
        value = self.env.get(name)
        unset = value is None or (colon and value == "")
        if ch == "-":
            return word if unset else value  # type: ignore[return-value]
        if ch == "+":
            return "" if unset else word
        if unset:
            raise ValueError(f"{name}: {word or 'is not allowed to be unset'}")
        return value  # type: ignore[return-value]


def expand(text: str, env: Mapping[str, str], escape: str = "\\") -> str:
    """One word with variables expanded and quotes and escapes removed (ProcessWord)."""
    return _Lexer(text, env, escape).word()[0]


def expand_words(text: str, env: Mapping[str, str], escape: str = "\\") -> list[str]:
    """Expanded and split into words (ProcessWords): `EXPOSE $PORTS` with PORTS='80 443'."""
    return _Lexer(text, env, escape).word()[1]
