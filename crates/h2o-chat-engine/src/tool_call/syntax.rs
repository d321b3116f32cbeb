//! The call syntaxes models are trained on, as the literal frame around a call's name and
//! arguments. An engine finds its model's by rendering a call with the model's own
//! template and looking for which of these it wrote.

/// A family's call syntax: `open` name `after_name` arguments `close`, calls joined by
/// `between`. The arguments are one JSON value (an object, as tools' parameters are).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Syntax {
    /// Its name, for logs and `/info`.
    pub name: &'static str,
    pub open: &'static str,
    pub after_name: &'static str,
    pub close: &'static str,
    pub between: &'static str,
    /// Whether an answer may hold several calls (Llama 3.x's templates refuse it).
    pub parallel: bool,
}

/// Hermes's and Qwen's, and the shared format every answer is read in
/// ([`crate::tool_call`]).
pub const HERMES: Syntax = Syntax {
    name: "hermes",
    open: "<tool_call>\n{\"name\": \"",
    after_name: "\", \"arguments\": ",
    close: "}\n</tool_call>",
    between: "\n",
    parallel: true,
};

/// Llama 3.1, 3.2 and 3.3's custom tools: `{"name": "f", "parameters": {…}}`, one call.
pub const LLAMA3: Syntax = Syntax {
    name: "llama3",
    open: "{\"name\": \"",
    after_name: "\", \"parameters\": ",
    close: "}",
    between: "",
    parallel: false,
};

/// Mistral's since its v11 tokenizer (Mistral Small 3.1+, Devstral, Magistral,
/// Ministral 3): `[TOOL_CALLS]f[ARGS]{…}`, each call opened again.
pub const MISTRAL: Syntax = Syntax {
    name: "mistral",
    open: "[TOOL_CALLS]",
    after_name: "[ARGS]",
    close: "",
    between: "",
    parallel: true,
};

/// Every syntax known, in the order a template's rendering is matched against them
/// (Hermes's call holds Llama's opening, so it is looked for first).
pub const SYNTAXES: [Syntax; 3] = [HERMES, MISTRAL, LLAMA3];

impl Syntax {
    /// A call in this syntax; empty arguments are an empty object.
    pub fn written(&self, name: &str, arguments: &str) -> String {
        let arguments = if arguments.trim().is_empty() {
            "{}"
        } else {
            arguments
        };
        format!(
            "{}{name}{}{arguments}{}",
            self.open, self.after_name, self.close
        )
    }

    /// Whether answers in it are already in the shared format (nothing to translate).
    pub fn is_shared(&self) -> bool {
        *self == HERMES
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_syntax_writes_its_family_s_call() {
        let args = r#"{"city": "Paris"}"#;
        assert_eq!(
            LLAMA3.written("get_weather", args),
            r#"{"name": "get_weather", "parameters": {"city": "Paris"}}"#
        );
        assert_eq!(
            MISTRAL.written("get_weather", args),
            r#"[TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}"#
        );
        assert_eq!(MISTRAL.written("f", ""), "[TOOL_CALLS]f[ARGS]{}");
    }
}
