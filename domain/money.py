"""Money: exact decimals, ISO 4217 minor units, the one rounding rule, and the float trap.

Amounts are `Decimal`, never float. On the wire an amount is a decimal *string*; `Amount` is
that wire type (see `decode_amount`). Rounding happens only where DESIGN.md rule 2 says: each
invoice line amount and the invoice's tax, half-up to the currency's minor unit.
"""

import decimal
import re
from decimal import ROUND_HALF_UP, Decimal

# ISO 4217 minor units (exponents) of the currencies Tally accepts. A currency missing here is
# refused at the edge rather than guessed at.
MINOR_UNITS: dict[str, int] = {
    **dict.fromkeys(
        "AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BMD BND BOB BRL BSD BTN BWP BYN BZD "
        "CAD CDF CHF CNY COP CRC CUP CVE CZK DKK DOP DZD EGP ERN ETB EUR FJD FKP GBP GEL GHS GIP GMD "
        "GTQ GYD HKD HNL HTG HUF IDR ILS INR IRR JMD KES KGS KHR KPW KYD KZT LAK LBP LKR LRD LSL MAD "
        "MDL MGA MKD MMK MNT MOP MRU MUR MVR MWK MXN MYR MZN NAD NGN NIO NOK NPR NZD PAB PEN PGK PHP "
        "PKR PLN QAR RON RSD RUB SAR SBD SCR SDG SEK SGD SHP SLE SOS SRD SSP STN SYP SZL THB TJS TMT "
        "TOP TRY TTD TWD TZS UAH USD UYU UZS VES WST XCD YER ZAR ZMW ZWL".split(),
        2,
    ),
    **dict.fromkeys("BIF CLP DJF GNF ISK JPY KMF KRW PYG RWF UGX UYI VND VUV XAF XOF XPF".split(), 0),
    **dict.fromkeys("BHD IQD JOD KWD LYD OMR TND".split(), 3),
}


class UnknownCurrency(ValueError):
    def __init__(self, currency: str) -> None:
        super().__init__(f"{currency!r} is not an ISO 4217 currency Tally knows")
        self.currency = currency


def minor_unit(currency: str) -> Decimal:
    """The smallest amount of `currency`: Decimal("0.01") for USD, ("1") for JPY."""
    try:
        exponent = MINOR_UNITS[currency]
    except KeyError:
        raise UnknownCurrency(currency) from None
    return Decimal(1).scaleb(-exponent)


def round_money(amount: Decimal, currency: str) -> Decimal:
    """Half-up to the currency's minor unit: the only rounding rule in Tally."""
    assert isinstance(amount, Decimal), amount
    return amount.quantize(minor_unit(currency), rounding=ROUND_HALF_UP)


DECIMAL_STRING = re.compile(r"-?[0-9]+(\.[0-9]+)?")
MAX_DIGITS_WHOLE = 15  # amounts below 10^15
MAX_PLACES = 18  # sub-cent token prices: 0.000000000002


class Amount(Decimal):
    """An amount read from the wire, where it must be a JSON decimal string ("12.50", never 12.5).

    A Decimal in every way (arithmetic on it gives plain Decimals); its own type only so that
    msgspec hands it to `decode_hook` rather than accepting JSON numbers. Encode with `encode_hook`.
    """


def parse_amount(text: object) -> Amount:
    """A finite Amount from a decimal string; ValueError otherwise (never via float)."""
    if not isinstance(text, str):
        raise ValueError("must be a decimal string such as \"12.50\", not a JSON number")
    if not DECIMAL_STRING.fullmatch(text):
        raise ValueError(f"{text!r} is not a plain decimal number such as \"12.50\" (no exponent, no spaces)")
    amount = Amount(text)
    if amount and (amount.adjusted() >= MAX_DIGITS_WHOLE or -amount.as_tuple().exponent > MAX_PLACES):
        raise ValueError(f"{text!r} is out of range: at most {MAX_DIGITS_WHOLE} digits before the point and "
                         f"{MAX_PLACES} after")
    return amount


def decode_hook(type_: type, value: object) -> object:
    """msgspec `dec_hook` for Tally's wire types: an `Amount` is a decimal string (or a Decimal)."""
    if type_ is Amount:
        return Amount(value) if isinstance(value, Decimal) else parse_amount(value)
    raise NotImplementedError(type_)


def encode_hook(value: object) -> object:
    """msgspec `enc_hook`: an Amount goes out as the decimal string it is."""
    if isinstance(value, Decimal):
        return format(value, "f")  # plain notation: "0.000000000002", never "2E-12"
    raise NotImplementedError(type(value))


def schema_hook(type_: type) -> dict[str, object]:
    """msgspec `schema_hook`: an Amount's JSON Schema."""
    if type_ is Amount:
        return {"type": "string", "format": "decimal", "pattern": r"^-?\d+(\.\d+)?$", "examples": ["12.50"]}
    raise NotImplementedError(type_)


def trap_floats() -> None:
    """Make any float that reaches Decimal math raise, in this thread and in threads started later."""
    # 60 significant digits: sub-cent token prices times billions of units stay exact.
    for context in (decimal.DefaultContext, decimal.getcontext()):
        context.traps[decimal.FloatOperation] = True
        context.prec = 60
