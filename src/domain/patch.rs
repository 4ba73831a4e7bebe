//! Update patches: an UpdateCustomer field mask parsed into paths, and the
//! rules by which each path writes the customer.

use std::collections::BTreeMap;

use super::{
    customer::{AddressPart, CustomerFields, ValidFields},
    validation::{Invalid, Violations, echo},
};

/// Most paths in an update mask: every field, address part, metadata key
/// and provider fits with room to spare.
pub const MAX_MASK_PATHS: usize = 100;

/// One path of an UpdateCustomer field mask.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldPath {
    ExternalId,
    Email,
    Name,
    Phone,
    Timezone,
    Address,
    AddressPart(AddressPart),
    Metadata,
    MetadataKey(String),
    ProviderIds,
    ProviderId(String),
}

impl FieldPath {
    /// Every writable field: what "*" stands for.
    fn all() -> Vec<FieldPath> {
        vec![
            FieldPath::ExternalId,
            FieldPath::Email,
            FieldPath::Name,
            FieldPath::Phone,
            FieldPath::Timezone,
            FieldPath::Address,
            FieldPath::Metadata,
            FieldPath::ProviderIds,
        ]
    }

    fn parse(path: &str) -> Option<Vec<FieldPath>> {
        let simple = match path {
            "*" => return Some(Self::all()),
            "external_id" => FieldPath::ExternalId,
            "email" => FieldPath::Email,
            "name" => FieldPath::Name,
            "phone" => FieldPath::Phone,
            "timezone" => FieldPath::Timezone,
            "address" => FieldPath::Address,
            "metadata" => FieldPath::Metadata,
            "provider_ids" => FieldPath::ProviderIds,
            _ => {
                let (head, rest) = path.split_once('.')?;
                // AIP-161: map keys that are not plain identifiers may be
                // quoted with backticks.
                let key = rest
                    .strip_prefix('`')
                    .and_then(|k| k.strip_suffix('`'))
                    .unwrap_or(rest);
                if key.is_empty() {
                    return None;
                }
                match head {
                    "address" => FieldPath::AddressPart(
                        AddressPart::ALL.into_iter().find(|p| p.name() == rest)?,
                    ),
                    "metadata" => FieldPath::MetadataKey(key.to_owned()),
                    "provider_ids" => FieldPath::ProviderId(key.to_owned()),
                    _ => return None,
                }
            }
        };
        Some(vec![simple])
    }
}

/// What an UpdateCustomer writes: the paths and the values they take.
#[derive(Debug, Clone)]
pub struct Patch {
    paths: Vec<FieldPath>,
    values: CustomerFields,
}

impl Patch {
    /// A patch from a field mask, or, without one (`None` or empty), from the
    /// fields that are set in `values` (maps merged key by key).
    pub fn new(mask: Option<&[String]>, values: CustomerFields) -> Result<Patch, Invalid> {
        let paths = match mask {
            Some(mask) if mask.len() > MAX_MASK_PATHS => {
                return Err(Invalid::field(
                    "update_mask",
                    format!(
                        "must have at most {MAX_MASK_PATHS} paths (got {})",
                        mask.len()
                    ),
                ));
            }
            Some(mask) if !mask.is_empty() => {
                let mut v = Violations::new("");
                let mut paths = Vec::new();
                for path in mask {
                    match FieldPath::parse(path) {
                        Some(parsed) => paths.extend(parsed),
                        None => v.add(
                            "update_mask",
                            format!("unknown or read-only field path {}", echo(path)),
                        ),
                    }
                }
                v.into_result(paths)?
            }
            _ => Self::populated(&values),
        };
        Ok(Patch { paths, values })
    }

    fn populated(values: &CustomerFields) -> Vec<FieldPath> {
        // Every field, named: a new one does not compile until it is here.
        let CustomerFields {
            external_id,
            email,
            name,
            phone,
            address,
            timezone,
            metadata,
            provider_ids,
        } = values;
        let mut paths = Vec::new();
        if external_id.is_some() {
            paths.push(FieldPath::ExternalId);
        }
        if !email.is_empty() {
            paths.push(FieldPath::Email);
        }
        if name.is_some() {
            paths.push(FieldPath::Name);
        }
        if phone.is_some() {
            paths.push(FieldPath::Phone);
        }
        if timezone.is_some() {
            paths.push(FieldPath::Timezone);
        }
        for part in AddressPart::ALL {
            if address.part(part).is_some() {
                paths.push(FieldPath::AddressPart(part));
            }
        }
        paths.extend(metadata.keys().cloned().map(FieldPath::MetadataKey));
        paths.extend(provider_ids.keys().cloned().map(FieldPath::ProviderId));
        paths
    }

    /// Whether the patch writes nothing.
    pub fn is_empty(&self) -> bool {
        self.paths.is_empty()
    }

    /// The fields after the patch, validated as a whole: phone numbers read
    /// in the stored country, and the limits on map sizes, depend on the
    /// customer the patch is applied to.
    pub fn apply(&self, current: CustomerFields) -> Result<ValidFields, Invalid> {
        self.merge(current).validate("customer.")
    }

    /// The fields after the patch, not yet validated. An email path with an
    /// empty value is left for validation to reject (email is required).
    pub fn merge(&self, mut current: CustomerFields) -> CustomerFields {
        let values = &self.values;
        for path in &self.paths {
            match path {
                FieldPath::ExternalId => current.external_id = values.external_id.clone(),
                FieldPath::Email => current.email = values.email.clone(),
                FieldPath::Name => current.name = values.name.clone(),
                FieldPath::Phone => current.phone = values.phone.clone(),
                FieldPath::Timezone => current.timezone = values.timezone.clone(),
                FieldPath::Address => current.address = values.address.clone(),
                FieldPath::AddressPart(part) => {
                    *current.address.part_mut(*part) = values.address.part(*part).clone();
                }
                FieldPath::Metadata => current.metadata = values.metadata.clone(),
                FieldPath::MetadataKey(key) => {
                    set_or_remove(&mut current.metadata, key, values.metadata.get(key))
                }
                FieldPath::ProviderIds => current.provider_ids = values.provider_ids.clone(),
                FieldPath::ProviderId(key) => {
                    set_or_remove(&mut current.provider_ids, key, values.provider_ids.get(key))
                }
            }
        }
        current
    }
}

fn set_or_remove(map: &mut BTreeMap<String, String>, key: &str, value: Option<&String>) {
    match value {
        Some(value) => {
            map.insert(key.to_owned(), value.clone());
        }
        None => {
            map.remove(key);
        }
    }
}
