//! Whole-number expressions over `$name` references: `"$out / 4 * $width / 64 * $groups"`,
//! the arithmetic block templates need to derive one width from another, and the conditions
//! of a layer's `if` (`"$stride == 1 && $in == $out"`: 1 true, 0 false).
//!
//! Written by hand (about a hundred lines) rather than taken from a crate such as `evalexpr`:
//! those evaluate a language (assignments, strings, functions, floats), where a typo in a
//! width becomes another valid program; this grammar is `+ - * / %`, comparisons, `&&`, `||`,
//! `!`, parentheses, whole numbers and `$name`, with floor division as torchvision's
//! `int(...)` does on positive widths, and every error names the expression.

/// Evaluates `text` with `lookup` giving each `$name`'s value.
pub fn eval(text: &str, lookup: &mut dyn FnMut(&str) -> Result<i64, String>) -> Result<i64, String> {
    let mut p = Parser { s: text.as_bytes(), at: 0, lookup };
    let v = p.or()?;
    p.skip_space();
    if p.at != p.s.len() {
        return Err(format!("\"{text}\": unexpected `{}` at column {}", p.s[p.at] as char, p.at + 1));
    }
    Ok(v)
}

struct Parser<'s, 'l> {
    s: &'s [u8],
    at: usize,
    lookup: &'l mut dyn FnMut(&str) -> Result<i64, String>,
}

impl Parser<'_, '_> {
    fn skip_space(&mut self) {
        while self.s.get(self.at).is_some_and(u8::is_ascii_whitespace) {
            self.at += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.skip_space();
        self.s.get(self.at).copied()
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(self.s).into_owned()
    }

    /// Whether the text at the cursor starts with `op` (after spaces); consumes it if so.
    fn eat(&mut self, op: &str) -> bool {
        self.skip_space();
        let hit = self.s[self.at..].starts_with(op.as_bytes());
        if hit {
            self.at += op.len();
        }
        hit
    }

    fn or(&mut self) -> Result<i64, String> {
        let mut v = self.and()?;
        while self.eat("||") {
            let r = self.and()?;
            v = i64::from(v != 0 || r != 0);
        }
        Ok(v)
    }

    fn and(&mut self) -> Result<i64, String> {
        let mut v = self.comparison()?;
        while self.eat("&&") {
            let r = self.comparison()?;
            v = i64::from(v != 0 && r != 0);
        }
        Ok(v)
    }

    fn comparison(&mut self) -> Result<i64, String> {
        let v = self.sum()?;
        for op in ["==", "!=", "<=", ">=", "<", ">"] {
            if self.eat(op) {
                let r = self.sum()?;
                let holds = match op {
                    "==" => v == r,
                    "!=" => v != r,
                    "<=" => v <= r,
                    ">=" => v >= r,
                    "<" => v < r,
                    _ => v > r,
                };
                return Ok(i64::from(holds));
            }
        }
        Ok(v)
    }

    fn sum(&mut self) -> Result<i64, String> {
        let mut v = self.product()?;
        while let Some(op @ (b'+' | b'-')) = self.peek() {
            self.at += 1;
            let r = self.product()?;
            v = if op == b'+' { v.checked_add(r) } else { v.checked_sub(r) }
                .ok_or_else(|| format!("\"{}\": overflows", self.text()))?;
        }
        Ok(v)
    }

    fn product(&mut self) -> Result<i64, String> {
        let mut v = self.atom()?;
        while let Some(op @ (b'*' | b'/' | b'%')) = self.peek() {
            self.at += 1;
            let r = self.atom()?;
            if op != b'*' && r == 0 {
                return Err(format!("\"{}\": division by zero", self.text()));
            }
            v = match op {
                b'*' => v.checked_mul(r).ok_or_else(|| format!("\"{}\": overflows", self.text()))?,
                b'/' => v.div_euclid(r),
                _ => v.rem_euclid(r),
            };
        }
        Ok(v)
    }

    fn atom(&mut self) -> Result<i64, String> {
        match self.peek() {
            Some(b'!') => {
                self.at += 1;
                Ok(i64::from(self.atom()? == 0))
            }
            Some(b'(') => {
                self.at += 1;
                let v = self.or()?;
                if self.peek() != Some(b')') {
                    return Err(format!("\"{}\": a `(` is not closed", self.text()));
                }
                self.at += 1;
                Ok(v)
            }
            Some(b'$') => {
                self.at += 1;
                let start = self.at;
                while self.s.get(self.at).is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'_') {
                    self.at += 1;
                }
                if start == self.at {
                    return Err(format!("\"{}\": `$` must be followed by a name", self.text()));
                }
                let name = String::from_utf8_lossy(&self.s[start..self.at]).into_owned();
                (self.lookup)(&name)
            }
            Some(c) if c.is_ascii_digit() => {
                let start = self.at;
                while self.s.get(self.at).is_some_and(u8::is_ascii_digit) {
                    self.at += 1;
                }
                let digits = std::str::from_utf8(&self.s[start..self.at]).expect("ascii digits");
                digits.parse().map_err(|_| format!("\"{}\": {digits} is too large", self.text()))
            }
            Some(c) => Err(format!("\"{}\": expected a number, `$name` or `(`, found `{}`", self.text(), c as char)),
            None => Err(format!("\"{}\": ends where a number, `$name` or `(` was expected", self.text())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eval_with(text: &str, vars: &[(&str, i64)]) -> Result<i64, String> {
        eval(text, &mut |n| vars.iter().find(|(k, _)| *k == n).map(|(_, v)| *v).ok_or(format!("no `${n}`")))
    }

    #[test]
    fn precedence_parentheses_and_floor_division() {
        // torchvision's Bottleneck width: int(planes * (width_per_group / 64.0)) * groups with
        // planes = out / 4: ResNeXt50 32x4d's first stage has 128 channels.
        let vars = [("out", 256), ("width", 4), ("groups", 32)];
        assert_eq!(eval_with("$out / 4 * $width / 64 * $groups", &vars), Ok(128));
        assert_eq!(eval_with("2 + 3 * 4", &[]), Ok(14));
        assert_eq!(eval_with("(2 + 3) * 4", &[]), Ok(20));
        assert_eq!(eval_with(" 7 / 2 - 7 % 2 ", &[]), Ok(2));
        assert_eq!(eval_with("1 - 5 / 2", &[]), Ok(-1));
    }

    #[test]
    fn conditions_are_one_or_zero() {
        // MobileNetV2's residual: stride 1 and as many channels out as in.
        let vars = [("stride", 1), ("in", 24), ("out", 24)];
        assert_eq!(eval_with("$stride == 1 && $in == $out", &vars), Ok(1));
        assert_eq!(eval_with("$stride == 2 || $in != $out", &vars), Ok(0));
        assert_eq!(eval_with("!($in > 32) && $out >= 24 && 3 > 2 && 2 <= 2", &vars), Ok(1));
        assert_eq!(eval_with("!($in < 32)", &vars), Ok(0));
        assert_eq!(eval_with("$in * 2 == 48", &vars), Ok(1));
    }

    #[test]
    fn errors_name_the_expression() {
        assert_eq!(eval_with("$in * 2", &[]), Err("no `$in`".into()));
        assert!(eval_with("4 / (2 - 2)", &[]).unwrap_err().contains("division by zero"));
        assert!(eval_with("(4 + 2", &[]).unwrap_err().contains("not closed"));
        assert!(eval_with("4 +", &[]).unwrap_err().contains("ends where"));
        assert!(eval_with("4 4", &[]).unwrap_err().contains("unexpected `4` at column 3"));
        assert!(eval_with("$ * 2", &[]).unwrap_err().contains("followed by a name"));
    }
}
