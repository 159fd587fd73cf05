//! `clawgate certs`: development certificates, an operator's admin
//! certificate, rotation and revocation (the CRL `serve --crl` reloads).

use std::process::ExitCode;

use anyhow::Context as _;
use clawgate::certs;

use crate::cli::CertsCommand;

/// `certs init`, `agent`, `admin` and `revoke`.
pub(crate) fn run(command: CertsCommand) -> anyhow::Result<ExitCode> {
    match command {
        CertsCommand::Init { dir, sans, force } => {
            for path in certs::init(&dir, &sans, force)? {
                println!("wrote {}", path.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        CertsCommand::Agent {
            name,
            dir,
            days,
            force,
            rotate,
        } => {
            // Rotation needs something to rotate, and says what to revoke.
            let old = if rotate {
                Some(serial_of(&dir.join("agents").join(format!("{name}.pem")))?)
            } else {
                None
            };
            for path in certs::agent(&dir, &name, days, force || rotate)? {
                println!("wrote {}", path.display());
            }
            println!("identity: {}", certs::agent_spiffe_id(&name));
            if let Some(old) = old {
                let new = serial_of(&dir.join("agents").join(format!("{name}.pem")))?;
                println!("serial: {new} (replaces {old})");
                println!(
                    "revoke the old one: `clawgate certs revoke {old}` (the CRL `serve --crl` reloads), or at once an override {{\"kind\":\"revoke-serial\",\"target\":\"{old}\",…}}"
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        CertsCommand::AnchorKey { out } => {
            let public = clawgate::audit::anchor::generate_key(&out)?;
            println!(
                "wrote {} (private, mode 0600: keep it apart from the log)",
                out.display()
            );
            let public_path = clawgate::audit::anchor::public_path(&out);
            println!("wrote {}", public_path.display());
            println!("public key: {public}");
            Ok(ExitCode::SUCCESS)
        }
        CertsCommand::Revoke { target, dir, crl } => {
            let serial = match target {
                Some(t) if std::path::Path::new(&t).is_file() => {
                    Some(serial_of(std::path::Path::new(&t))?)
                }
                other => other,
            };
            let serials = certs::revoke(&dir, &crl, serial.as_deref())?;
            match &serial {
                Some(serial) => print!("revoked {}; ", certs::normalise_serial_hex(serial)?),
                None => print!("wrote the CRL; "),
            }
            println!(
                "{} lists {} serial(s); `serve --crl {}` reloads it",
                crl.display(),
                serials.len(),
                crl.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        CertsCommand::Admin {
            name,
            dir,
            days,
            force,
        } => {
            for path in certs::agent(&dir, &name, days, force)? {
                println!("wrote {}", path.display());
            }
            let id = certs::agent_spiffe_id(&name);
            println!("identity: {id}");
            println!("add to a policy file (an admin is also an auditor):");
            println!("[roles]\nadmins = [\"{id}\"]");
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The serial of the certificate in the PEM file at `path`, lowercase hex.
fn serial_of(path: &std::path::Path) -> anyhow::Result<String> {
    use rustls_pki_types::pem::PemObject as _;
    let der = rustls_pki_types::CertificateDer::from_pem_file(path)
        .with_context(|| format!("cannot read the certificate `{}`", path.display()))?;
    let identity = clawgate::identity::from_der(&der)
        .with_context(|| format!("cannot read the certificate `{}`", path.display()))?;
    Ok(identity.serial)
}
