//! The web config's guard against YAML alias bombs: a walk of the document
//! that keeps nothing and charges every node and scalar byte, aliases
//! expanded, to a budget of twice the file's size, before the typed parse
//! builds anything. Owns no configuration; `web_config` calls it.

use std::{cell::Cell, fmt};

use serde::de::{self, DeserializeSeed, Visitor};

/// Refuses `text` if its aliases would expand it to more than twice its
/// size (plus 1 KiB), after at most that much work.
pub(super) fn check_alias_expansion(text: &str) -> Result<(), yaml_serde::Error> {
    let left = Cell::new(text.len().saturating_mul(2).saturating_add(1024));
    Walk { left: &left }.deserialize(yaml_serde::Deserializer::from_str(text))
}

/// Walks a YAML document without keeping any of it, charging every node
/// and scalar byte to a budget, aliases expanded as the typed parse would
/// expand them: a file whose aliases would blow it up (a "billion laughs")
/// is refused after at most the budget's worth of work.
struct Walk<'a> {
    left: &'a Cell<usize>,
}

impl Walk<'_> {
    fn charge<E: de::Error>(&self, units: usize) -> Result<(), E> {
        match self.left.get().checked_sub(units) {
            Some(left) => {
                self.left.set(left);
                Ok(())
            }
            None => Err(E::custom(
                "aliases expand this document to more than twice the size of the file; refusing to expand them",
            )),
        }
    }
}

impl<'de> DeserializeSeed<'de> for Walk<'_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Walk<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        self.charge(1)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        self.charge(1)
    }

    fn visit_i128<E: de::Error>(self, _: i128) -> Result<(), E> {
        self.charge(1)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        self.charge(1)
    }

    fn visit_u128<E: de::Error>(self, _: u128) -> Result<(), E> {
        self.charge(1)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        self.charge(1)
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<(), E> {
        self.charge(1 + text.len())
    }

    fn visit_bytes<E: de::Error>(self, bytes: &[u8]) -> Result<(), E> {
        self.charge(1 + bytes.len())
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.charge(1)
    }

    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        self.charge(1)
    }

    fn visit_some<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        self.charge(1)?;
        deserializer.deserialize_any(self)
    }

    fn visit_newtype_struct<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        self.charge(1)?;
        while seq.next_element_seed(Walk { left: self.left })?.is_some() {}
        Ok(())
    }

    fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        self.charge(1)?;
        while map.next_key_seed(Walk { left: self.left })?.is_some() {
            map.next_value_seed(Walk { left: self.left })?;
        }
        Ok(())
    }

    fn visit_enum<A: de::EnumAccess<'de>>(self, data: A) -> Result<(), A::Error> {
        // A tagged value (`!tag value`): the tag, then the value.
        use de::VariantAccess as _;
        let ((), variant) = data.variant_seed(Walk { left: self.left })?;
        variant.newtype_variant_seed(Walk { left: self.left })
    }
}
