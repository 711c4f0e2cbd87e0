//! A minimal streaming JSON writer: the report is a fixed shape of numbers and strings, so a
//! serialisation framework would add a dependency for nothing.

pub struct JsonWriter {
    out: String,
    /// Whether the current container already holds an element (a comma is due).
    nonempty: Vec<bool>,
    after_key: bool,
}

impl Default for JsonWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl JsonWriter {
    pub fn new() -> Self {
        JsonWriter { out: String::new(), nonempty: Vec::new(), after_key: false }
    }

    fn separate(&mut self) {
        if self.after_key {
            self.after_key = false;
            return;
        }
        if let Some(nonempty) = self.nonempty.last_mut() {
            if *nonempty {
                self.out.push(',');
            }
            *nonempty = true;
        }
    }

    pub fn begin_object(&mut self) {
        self.separate();
        self.out.push('{');
        self.nonempty.push(false);
    }

    pub fn end_object(&mut self) {
        self.nonempty.pop();
        self.out.push('}');
    }

    pub fn begin_array(&mut self) {
        self.separate();
        self.out.push('[');
        self.nonempty.push(false);
    }

    pub fn end_array(&mut self) {
        self.nonempty.pop();
        self.out.push(']');
    }

    pub fn key(&mut self, key: &str) {
        self.separate();
        push_string(&mut self.out, key);
        self.out.push(':');
        self.after_key = true;
    }

    pub fn null(&mut self) {
        self.separate();
        self.out.push_str("null");
    }

    pub fn item_str(&mut self, s: &str) {
        self.separate();
        push_string(&mut self.out, s);
    }

    pub fn field_str(&mut self, key: &str, value: &str) {
        self.key(key);
        self.item_str(value);
    }

    pub fn field_u64(&mut self, key: &str, value: u64) {
        self.key(key);
        self.separate();
        self.out.push_str(&value.to_string());
    }

    pub fn field_i64(&mut self, key: &str, value: i64) {
        self.key(key);
        self.separate();
        self.out.push_str(&value.to_string());
    }

    pub fn field_null(&mut self, key: &str) {
        self.key(key);
        self.null();
    }

    pub fn finish(self) -> String {
        self.out
    }
}

fn push_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_shapes_and_escapes() {
        let mut w = JsonWriter::new();
        w.begin_object();
        w.field_str("s", "a\"b\\c\n\u{1}");
        w.key("a");
        w.begin_array();
        w.item_str("x");
        w.null();
        w.begin_object();
        w.end_object();
        w.end_array();
        w.field_i64("n", -3);
        w.field_null("z");
        w.end_object();
        assert_eq!(w.finish(), r#"{"s":"a\"b\\c\n\u0001","a":["x",null,{}],"n":-3,"z":null}"#);
    }
}
