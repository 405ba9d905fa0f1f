//! An independent reader for XML the tool or libvirt wrote: quick-xml events into a plain tree, for assertions.

use std::collections::BTreeMap;

use quick_xml::events::Event;
use quick_xml::Reader;

#[derive(Debug, Default, Clone)]
pub struct El {
    pub name: String,
    pub attrs: BTreeMap<String, String>,
    pub children: Vec<El>,
    pub text: String,
}

impl El {
    pub fn parse(xml: &str) -> El {
        let mut r = Reader::from_str(xml);
        let mut stack = vec![El::default()];
        loop {
            match r.read_event().expect("well-formed XML") {
                Event::Start(s) => stack.push(el_of(&s)),
                Event::Empty(s) => {
                    let e = el_of(&s);
                    stack.last_mut().unwrap().children.push(e);
                }
                Event::End(_) => {
                    let e = stack.pop().unwrap();
                    stack.last_mut().unwrap().children.push(e);
                }
                Event::Text(t) => stack.last_mut().unwrap().text += &t.decode().unwrap(),
                Event::GeneralRef(g) => {
                    let s = match g.resolve_char_ref().unwrap() {
                        Some(c) => c.to_string(),
                        None => quick_xml::escape::resolve_predefined_entity(&g.decode().unwrap())
                            .unwrap()
                            .to_string(),
                    };
                    stack.last_mut().unwrap().text += &s;
                }
                Event::Eof => break,
                _ => {}
            }
        }
        assert_eq!(stack.len(), 1, "unbalanced XML");
        stack.pop().unwrap().children.remove(0)
    }

    /// Children named `name`.
    pub fn all<'a>(&'a self, name: &str) -> Vec<&'a El> {
        self.children.iter().filter(|c| c.name == name).collect()
    }

    /// The one child named `name`.
    pub fn one(&self, name: &str) -> &El {
        let v = self.all(name);
        assert_eq!(v.len(), 1, "expected one <{name}> in <{}>", self.name);
        v[0]
    }

    pub fn opt(&self, name: &str) -> Option<&El> {
        self.children.iter().find(|c| c.name == name)
    }

    /// A child by a `/`-separated path of names (the first match at each step).
    pub fn path(&self, p: &str) -> Option<&El> {
        p.split('/').try_fold(self, |e, n| e.opt(n))
    }

    pub fn at(&self, k: &str) -> Option<&str> {
        self.attrs.get(k).map(|s| s.as_str())
    }
}

fn el_of(s: &quick_xml::events::BytesStart) -> El {
    El {
        name: String::from_utf8(s.name().as_ref().to_vec()).unwrap(),
        attrs: s
            .attributes()
            .map(|a| {
                let a = a.unwrap();
                (
                    String::from_utf8(a.key.as_ref().to_vec()).unwrap(),
                    a.unescape_value().unwrap().into_owned(),
                )
            })
            .collect(),
        ..Default::default()
    }
}
