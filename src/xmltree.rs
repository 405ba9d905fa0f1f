//! A small element tree over quick-xml, so templates and libvirt's XML can be edited and written back escaped.

use std::borrow::Cow;

use anyhow::{bail, Context, Result};
use quick_xml::events::attributes::Attribute;
use quick_xml::events::{BytesEnd, BytesStart, BytesText, Event};
use quick_xml::name::QName;
use quick_xml::{Reader, Writer};

/// Documents deeper than this are not domain XML: refuse rather than recurse without bound.
const MAX_DEPTH: usize = 64;

#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    Element(Element),
    Text(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Element {
    /// The qualified name as written (`vmdkimport:import`): prefixes are kept, not resolved.
    pub name: String,
    pub attrs: Vec<(String, String)>,
    pub children: Vec<Node>,
}

impl Element {
    pub fn new(name: &str) -> Self {
        Element {
            name: name.to_string(),
            attrs: Vec::new(),
            children: Vec::new(),
        }
    }

    /// Builder: set an attribute.
    pub fn attr(mut self, key: &str, value: &str) -> Self {
        self.set_attr(key, value);
        self
    }

    /// Builder: append a child element.
    pub fn child(mut self, child: Element) -> Self {
        self.children.push(Node::Element(child));
        self
    }

    /// Builder: append text.
    pub fn text(mut self, text: &str) -> Self {
        self.children.push(Node::Text(text.to_string()));
        self
    }

    pub fn set_attr(&mut self, key: &str, value: &str) {
        match self.attrs.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = value.to_string(),
            None => self.attrs.push((key.to_string(), value.to_string())),
        }
    }

    pub fn get_attr(&self, key: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The name without its namespace prefix.
    pub fn local_name(&self) -> &str {
        self.name.rsplit(':').next().unwrap_or(&self.name)
    }

    pub fn elements(&self) -> impl Iterator<Item = &Element> {
        self.children.iter().filter_map(|n| match n {
            Node::Element(e) => Some(e),
            Node::Text(_) => None,
        })
    }

    pub fn elements_mut(&mut self) -> impl Iterator<Item = &mut Element> {
        self.children.iter_mut().filter_map(|n| match n {
            Node::Element(e) => Some(e),
            Node::Text(_) => None,
        })
    }

    pub fn find(&self, name: &str) -> Option<&Element> {
        self.elements().find(|e| e.name == name)
    }

    pub fn find_mut(&mut self, name: &str) -> Option<&mut Element> {
        self.elements_mut().find(|e| e.name == name)
    }

    /// The first child with this name, created (appended) when missing.
    pub fn find_or_insert(&mut self, name: &str) -> &mut Element {
        if self.find(name).is_none() {
            self.children.push(Node::Element(Element::new(name)));
        }
        self.find_mut(name).expect("just inserted")
    }

    pub fn remove_children(&mut self, name: &str) {
        self.children
            .retain(|n| !matches!(n, Node::Element(e) if e.name == name));
    }

    /// All text directly inside this element, concatenated.
    pub fn text_content(&self) -> String {
        self.children
            .iter()
            .filter_map(|n| match n {
                Node::Text(t) => Some(t.as_str()),
                Node::Element(_) => None,
            })
            .collect()
    }

    pub fn set_text(&mut self, text: &str) {
        self.children.retain(|n| matches!(n, Node::Element(_)));
        self.children.insert(0, Node::Text(text.to_string()));
    }
}

/// Parse a document (or a lone element) into its root element. Whitespace-only text between
/// elements is dropped: the writer re-indents, and libvirt's XML carries no mixed content.
pub fn parse(xml: &str) -> Result<Element> {
    let mut reader = Reader::from_str(xml);
    let mut stack: Vec<Element> = Vec::new();
    let mut root: Option<Element> = None;
    loop {
        let pos = reader.buffer_position();
        let ev = reader
            .read_event()
            .with_context(|| format!("XML error near byte {pos}"))?;
        match ev {
            Event::Start(s) => {
                if stack.len() >= MAX_DEPTH {
                    bail!("XML nests deeper than {MAX_DEPTH} elements (byte {pos})");
                }
                stack.push(element_from(&s)?);
            }
            Event::Empty(s) => {
                let el = element_from(&s)?;
                attach(&mut stack, &mut root, el, pos)?;
            }
            Event::End(_) => {
                let el = stack.pop().context("unbalanced end tag")?;
                attach(&mut stack, &mut root, el, pos)?;
            }
            Event::Text(t) => push_text(&mut stack, &t.decode()?, pos)?,
            Event::CData(c) => push_text(&mut stack, &c.decode()?, pos)?,
            Event::GeneralRef(r) => {
                let s = match r.resolve_char_ref()? {
                    Some(c) => c.to_string(),
                    None => {
                        let name = r.decode()?;
                        match quick_xml::escape::resolve_predefined_entity(&name) {
                            Some(s) => s.to_string(),
                            None => bail!("unknown entity &{name}; near byte {pos}"),
                        }
                    }
                };
                push_text(&mut stack, &s, pos)?;
            }
            Event::Eof => break,
            // Declarations, comments, processing instructions and DOCTYPEs carry no values.
            _ => {}
        }
    }
    if !stack.is_empty() {
        bail!("XML ends inside <{}>", stack.last().unwrap().name);
    }
    let mut root = root.context("XML has no root element")?;
    drop_blank_text(&mut root);
    Ok(root)
}

fn element_from(s: &BytesStart) -> Result<Element> {
    let name = String::from_utf8(s.name().as_ref().to_vec()).context("element name")?;
    let mut el = Element::new(&name);
    for a in s.attributes() {
        let a = a?;
        let key = String::from_utf8(a.key.as_ref().to_vec()).context("attribute name")?;
        let value = a.unescape_value()?.into_owned();
        el.attrs.push((key, value));
    }
    Ok(el)
}

fn attach(stack: &mut [Element], root: &mut Option<Element>, el: Element, pos: u64) -> Result<()> {
    match stack.last_mut() {
        Some(parent) => parent.children.push(Node::Element(el)),
        None if root.is_none() => *root = Some(el),
        None => bail!("second root element near byte {pos}"),
    }
    Ok(())
}

fn push_text(stack: &mut [Element], text: &str, pos: u64) -> Result<()> {
    match stack.last_mut() {
        // Adjacent pieces (text, then an entity, then text) become one string.
        Some(parent) => match parent.children.last_mut() {
            Some(Node::Text(t)) => t.push_str(text),
            _ => parent.children.push(Node::Text(text.to_string())),
        },
        None if text.trim().is_empty() => {}
        None => bail!("text outside the root element near byte {pos}"),
    }
    Ok(())
}

fn drop_blank_text(el: &mut Element) {
    let has_elements = el.elements().next().is_some();
    if has_elements {
        el.children
            .retain(|n| !matches!(n, Node::Text(t) if t.trim().is_empty()));
    }
    for c in el.elements_mut() {
        drop_blank_text(c);
    }
}

/// Escape for attribute values and text alike. Beyond the five XML specials, tab, newline and
/// carriage return become character references: a parser (libxml2 in libvirtd) would otherwise
/// turn them into spaces in attributes and CR into LF in text, and a value would not round-trip.
/// Characters XML 1.0 cannot carry at all (most C0 controls) become U+FFFD.
pub fn escape(s: &str) -> Cow<'_, str> {
    let needs = s
        .chars()
        .any(|c| matches!(c, '&' | '<' | '>' | '"' | '\'' | '\t' | '\n' | '\r') || !is_xml_char(c));
    if !needs {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' => out.push_str("&#9;"),
            '\n' => out.push_str("&#10;"),
            '\r' => out.push_str("&#13;"),
            c if !is_xml_char(c) => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// XML 1.0's Char production.
pub fn is_xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
}

/// Write the element (no XML declaration), indented by two spaces.
pub fn to_string(root: &Element) -> String {
    let mut w = Writer::new_with_indent(Vec::new(), b' ', 2);
    write_el(&mut w, root).expect("writing to a Vec cannot fail");
    let mut s = String::from_utf8(w.into_inner()).expect("writer got only UTF-8");
    s.push('\n');
    s
}

fn write_el(w: &mut Writer<Vec<u8>>, el: &Element) -> std::io::Result<()> {
    let mut start = BytesStart::new(el.name.as_str());
    for (k, v) in &el.attrs {
        // Pushed pre-escaped, so our escaping (not quick-xml's) decides the bytes.
        start.push_attribute(Attribute {
            key: QName(k.as_bytes()),
            value: Cow::Owned(escape(v).into_owned().into_bytes()),
        });
    }
    if el.children.is_empty() {
        return w.write_event(Event::Empty(start));
    }
    w.write_event(Event::Start(start))?;
    for c in &el.children {
        match c {
            Node::Element(e) => write_el(w, e)?,
            Node::Text(t) => w.write_event(Event::Text(BytesText::from_escaped(escape(t))))?,
        }
    }
    w.write_event(Event::End(BytesEnd::new(el.name.as_str())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_text_and_attributes_round_trip() {
        let nasty = "a\"b'c<d>e&f\tg\nh\ri ]]> &amp; é";
        let el = Element::new("x")
            .attr("v", nasty)
            .child(Element::new("t").text(nasty));
        let s = to_string(&el);
        let back = parse(&s).unwrap();
        assert_eq!(back.get_attr("v"), Some(nasty));
        assert_eq!(back.find("t").unwrap().text_content(), nasty);
    }

    #[test]
    fn control_characters_become_replacement_characters() {
        let el = Element::new("x").text("a\u{1}b");
        let back = parse(&to_string(&el)).unwrap();
        assert_eq!(back.text_content(), "a\u{FFFD}b");
    }
}
