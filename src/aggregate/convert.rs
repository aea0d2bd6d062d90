//! Backend answers in JSON, XML, `application/x-www-form-urlencoded` or plain text, turned
//! into JSON values (docs/config.md, "Format conversion").
//!
//! XML mapping: the root element's name is the top key; attributes become `@name` string
//! members; an element with only text becomes that text (a string); an element that has
//! text and attributes or children keeps the text under `#text`; an empty element is `""`;
//! repeated child elements become an array in document order. Values stay strings (no type
//! guessing). Names are kept as written, namespace prefix included. Comments, processing
//! instructions and the declaration are ignored; a DOCTYPE is refused (no entity expansion).

use serde_json::{Map, Value};

/// Most nesting of XML elements a body may have.
pub(crate) const MAX_XML_DEPTH: usize = 64;

/// What a call's answer is read as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    /// By the answer's `content-type`.
    Auto,
    /// JSON.
    Json,
    /// XML.
    Xml,
    /// `application/x-www-form-urlencoded`.
    Form,
    /// Any text: `{"text": "..."}`.
    Text,
}

impl Format {
    /// The format a `content-type` names; JSON when absent or unknown.
    pub(crate) fn of(content_type: Option<&str>) -> Format {
        let Some(ct) = content_type else {
            return Format::Json;
        };
        let essence = ct
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if essence == "application/json" || essence.ends_with("+json") {
            Format::Json
        } else if essence == "application/xml" || essence == "text/xml" || essence.ends_with("+xml")
        {
            Format::Xml
        } else if essence == "application/x-www-form-urlencoded" {
            Format::Form
        } else if essence.starts_with("text/") {
            Format::Text
        } else {
            Format::Json
        }
    }
}

/// Why a body could not be converted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum ConvertError {
    /// Not valid JSON.
    #[error("the answer is not valid JSON")]
    Json,
    /// Not well-formed XML (or a construct that is refused).
    #[error("the answer is not well-formed XML: {0}")]
    Xml(&'static str),
    /// XML nested deeper than [`MAX_XML_DEPTH`].
    #[error("the XML answer is nested deeper than {MAX_XML_DEPTH} elements")]
    TooDeep,
    /// Not UTF-8 text.
    #[error("the answer is not UTF-8 text")]
    Utf8,
}

/// Converts a body to JSON. `format` must not be [`Format::Auto`] (resolve it first with
/// [`Format::of`]); `Auto` is read as JSON.
pub(crate) fn convert(body: &[u8], format: Format) -> Result<Value, ConvertError> {
    match format {
        Format::Auto | Format::Json => serde_json::from_slice(body).map_err(|_| ConvertError::Json),
        Format::Xml => xml(body),
        Format::Form => Ok(form(body)),
        Format::Text => {
            let text = std::str::from_utf8(body).map_err(|_| ConvertError::Utf8)?;
            let mut map = Map::new();
            map.insert("text".into(), Value::String(text.to_owned()));
            Ok(Value::Object(map))
        }
    }
}

/// A form body as an object; a name given more than once becomes an array of its values.
pub(crate) fn form(body: &[u8]) -> Value {
    let mut map = Map::new();
    for (name, value) in form_urlencoded::parse(body) {
        let value = Value::String(value.into_owned());
        match map.get_mut(name.as_ref()) {
            Some(Value::Array(items)) => items.push(value),
            Some(first) => {
                let first = first.take();
                map.insert(name.into_owned(), Value::Array(vec![first, value]));
            }
            None => {
                map.insert(name.into_owned(), value);
            }
        }
    }
    Value::Object(map)
}

/// An element being read: its name, members and text so far.
struct Open {
    name: String,
    members: Map<String, Value>,
    text: String,
}

impl Open {
    fn new(start: &quick_xml::events::BytesStart<'_>) -> Result<Open, ConvertError> {
        let name = utf8(start.name().as_ref())?.to_owned();
        let mut members = Map::new();
        for attr in start.attributes() {
            let attr = attr.map_err(|_| ConvertError::Xml("a malformed attribute"))?;
            let key = format!("@{}", utf8(attr.key.as_ref())?);
            let value = attr
                .unescape_value()
                .map_err(|_| ConvertError::Xml("a malformed attribute value"))?;
            members.insert(key, Value::String(value.into_owned()));
        }
        Ok(Open {
            name,
            members,
            text: String::new(),
        })
    }

    /// The element's value, by the mapping in the module doc.
    fn finish(self) -> Value {
        let text = self.text.trim();
        if self.members.is_empty() {
            return Value::String(text.to_owned());
        }
        let mut members = self.members;
        if !text.is_empty() {
            members.insert("#text".into(), Value::String(text.to_owned()));
        }
        Value::Object(members)
    }
}

fn utf8(bytes: &[u8]) -> Result<&str, ConvertError> {
    std::str::from_utf8(bytes).map_err(|_| ConvertError::Utf8)
}

/// Adds a child's value under its name: a repeated name becomes an array.
fn add_child(members: &mut Map<String, Value>, name: String, value: Value) {
    match members.get_mut(&name) {
        Some(Value::Array(items)) => items.push(value),
        Some(first) => {
            let first = first.take();
            members.insert(name, Value::Array(vec![first, value]));
        }
        None => {
            members.insert(name, value);
        }
    }
}

/// An XML document as JSON, by the mapping in the module doc. Streams the body once; the
/// stack is bounded by [`MAX_XML_DEPTH`].
pub(crate) fn xml(body: &[u8]) -> Result<Value, ConvertError> {
    use quick_xml::events::Event;
    let mut reader = quick_xml::Reader::from_reader(body);
    let config = reader.config_mut();
    config.check_end_names = true;
    config.expand_empty_elements = false;
    let mut stack: Vec<Open> = Vec::new();
    let mut root: Option<Value> = None;
    loop {
        let event = reader
            .read_event()
            .map_err(|_| ConvertError::Xml("a syntax error"))?;
        match event {
            Event::Start(start) => {
                if root.is_some() {
                    return Err(ConvertError::Xml("more than one root element"));
                }
                if stack.len() >= MAX_XML_DEPTH {
                    return Err(ConvertError::TooDeep);
                }
                stack.push(Open::new(&start)?);
            }
            Event::Empty(start) => {
                if root.is_some() {
                    return Err(ConvertError::Xml("more than one root element"));
                }
                if stack.len() >= MAX_XML_DEPTH {
                    return Err(ConvertError::TooDeep);
                }
                let open = Open::new(&start)?;
                close(&mut stack, &mut root, open);
            }
            Event::End(_) => {
                let open = stack
                    .pop()
                    .ok_or(ConvertError::Xml("an end tag without its start"))?;
                close(&mut stack, &mut root, open);
            }
            Event::Text(text) => {
                let decoded = text
                    .xml_content()
                    .map_err(|_| ConvertError::Xml("undecodable text"))?;
                match stack.last_mut() {
                    Some(open) => open.text.push_str(&decoded),
                    None if decoded.trim().is_empty() => {}
                    None => return Err(ConvertError::Xml("text outside the root element")),
                }
            }
            Event::CData(data) => {
                let decoded = data
                    .decode()
                    .map_err(|_| ConvertError::Xml("undecodable CDATA"))?;
                match stack.last_mut() {
                    Some(open) => open.text.push_str(&decoded),
                    None => return Err(ConvertError::Xml("CDATA outside the root element")),
                }
            }
            Event::GeneralRef(reference) => {
                let Some(open) = stack.last_mut() else {
                    return Err(ConvertError::Xml("a reference outside the root element"));
                };
                match reference.resolve_char_ref() {
                    Ok(Some(ch)) => open.text.push(ch),
                    Ok(None) => {
                        let name = reference
                            .decode()
                            .map_err(|_| ConvertError::Xml("an undecodable reference"))?;
                        let resolved = quick_xml::escape::resolve_predefined_entity(&name)
                            .ok_or(ConvertError::Xml("an unknown entity"))?;
                        open.text.push_str(resolved);
                    }
                    Err(_) => return Err(ConvertError::Xml("an invalid character reference")),
                }
            }
            Event::DocType(_) => return Err(ConvertError::Xml("a DOCTYPE (refused)")),
            Event::Comment(_) | Event::Decl(_) | Event::PI(_) => {}
            Event::Eof => break,
        }
    }
    if !stack.is_empty() {
        return Err(ConvertError::Xml("an element is not closed"));
    }
    root.ok_or(ConvertError::Xml("no root element"))
}

/// A finished element goes into its parent, or becomes the document (under its name).
fn close(stack: &mut [Open], root: &mut Option<Value>, open: Open) {
    let name = open.name.clone();
    let value = open.finish();
    match stack.last_mut() {
        Some(parent) => add_child(&mut parent.members, name, value),
        None => {
            let mut top = Map::new();
            top.insert(name, value);
            *root = Some(Value::Object(top));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn xml_attributes_text_and_repeats() {
        let doc = br#"<?xml version="1.0"?>
<user id="42" kind="admin">
  <name>Ada &amp; co &#x41;</name>
  <tag>a</tag><tag>b</tag><tag>c</tag>
  <note lang="en">hello</note>
  <empty/>
  <!-- ignored -->
  <raw><![CDATA[<x>]]></raw>
</user>"#;
        assert_eq!(
            xml(doc).unwrap(),
            json!({"user": {
                "@id": "42", "@kind": "admin",
                "name": "Ada & co A",
                "tag": ["a", "b", "c"],
                "note": {"@lang": "en", "#text": "hello"},
                "empty": "",
                "raw": "<x>",
            }})
        );
    }

    #[test]
    fn xml_mixed_text_with_children() {
        let doc = b"<p>before<b>bold</b>after</p>";
        assert_eq!(
            xml(doc).unwrap(),
            json!({"p": {"b": "bold", "#text": "beforeafter"}})
        );
    }

    #[test]
    fn xml_depth_is_bounded() {
        let deep = |n: usize| {
            let mut s = String::new();
            for _ in 0..n {
                s.push_str("<a>");
            }
            for _ in 0..n {
                s.push_str("</a>");
            }
            s
        };
        assert!(xml(deep(MAX_XML_DEPTH).as_bytes()).is_ok());
        assert_eq!(
            xml(deep(MAX_XML_DEPTH + 1).as_bytes()),
            Err(ConvertError::TooDeep)
        );
    }

    #[test]
    fn xml_malformed_is_an_error() {
        for bad in [
            &b"<a><b></a>"[..],
            b"<a>",
            b"",
            b"<a></a><b></b>",
            b"text",
            b"<a x=1></a>",
            b"<!DOCTYPE a [<!ENTITY e 'x'>]><a>&e;</a>",
            b"<a>&unknown;</a>",
            b"\xff\xfe<a/>",
        ] {
            assert!(xml(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn form_and_text() {
        assert_eq!(
            form(b"a=1&b=x+y&a=2&c=%C3%A9"),
            json!({"a": ["1", "2"], "b": "x y", "c": "é"})
        );
        assert_eq!(convert(b"hi", Format::Text).unwrap(), json!({"text": "hi"}));
        assert_eq!(convert(b"\xff", Format::Text), Err(ConvertError::Utf8));
        assert_eq!(convert(b"{", Format::Json), Err(ConvertError::Json));
    }

    #[test]
    fn formats_by_content_type() {
        assert_eq!(
            Format::of(Some("application/json; charset=utf-8")),
            Format::Json
        );
        assert_eq!(Format::of(Some("application/problem+json")), Format::Json);
        assert_eq!(Format::of(Some("text/xml")), Format::Xml);
        assert_eq!(Format::of(Some("application/atom+xml")), Format::Xml);
        assert_eq!(
            Format::of(Some("application/x-www-form-urlencoded")),
            Format::Form
        );
        assert_eq!(Format::of(Some("text/plain")), Format::Text);
        assert_eq!(Format::of(None), Format::Json);
    }
}
