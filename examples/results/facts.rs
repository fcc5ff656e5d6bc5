//! The second old task of `forgetting`: general-knowledge questions with a number for an answer,
//! asked plainly and graded by the last number of the answer (the math environment). Nothing
//! here is arithmetic or in the `####` format the new task trains, so a drop after training is
//! knowledge or manners lost, not a skill moved.

use opd_tasks::Task;

/// `(question, answer)`: common facts a small chat model has seen many times.
const FACTS: [(&str, &str); 66] = [
    ("How many days are in a week?", "7"),
    ("How many months are in a year?", "12"),
    ("How many hours are in a day?", "24"),
    ("How many minutes are in an hour?", "60"),
    ("How many seconds are in a minute?", "60"),
    ("How many legs does a spider have?", "8"),
    ("How many legs does an insect have?", "6"),
    ("How many sides does a triangle have?", "3"),
    ("How many sides does a square have?", "4"),
    ("How many sides does a pentagon have?", "5"),
    ("How many sides does a hexagon have?", "6"),
    ("How many sides does an octagon have?", "8"),
    ("How many continents are there on Earth?", "7"),
    ("How many planets are in our solar system?", "8"),
    (
        "At what temperature in degrees Celsius does water boil at sea level?",
        "100",
    ),
    (
        "At what temperature in degrees Celsius does water freeze?",
        "0",
    ),
    ("In what year did World War II end?", "1945"),
    ("In what year did World War I begin?", "1914"),
    ("In what year did humans first land on the Moon?", "1969"),
    (
        "In what year did Christopher Columbus first reach the Americas?",
        "1492",
    ),
    ("How many days are in a leap year?", "366"),
    ("How many weeks are in a year?", "52"),
    (
        "How many players does a soccer team have on the field?",
        "11",
    ),
    ("How many strings does a standard guitar have?", "6"),
    ("How many keys does a standard piano have?", "88"),
    ("How many cents are in a US dollar?", "100"),
    ("How many centimeters are in a meter?", "100"),
    ("How many meters are in a kilometer?", "1000"),
    ("How many grams are in a kilogram?", "1000"),
    ("How many letters are in the English alphabet?", "26"),
    ("How many wheels does a bicycle have?", "2"),
    ("How many wheels does a tricycle have?", "3"),
    ("How many fingers are on one human hand?", "5"),
    ("How many hearts does an octopus have?", "3"),
    ("How many arms does an octopus have?", "8"),
    ("How many states are in the United States?", "50"),
    ("How many degrees are in a right angle?", "90"),
    ("How many degrees are in a full circle?", "360"),
    (
        "How many degrees do the angles of a triangle add up to?",
        "180",
    ),
    ("How many colors are in a rainbow?", "7"),
    ("How many zeros are in one million?", "6"),
    ("How many years are in a century?", "100"),
    ("How many years are in a decade?", "10"),
    ("How many years are in a millennium?", "1000"),
    ("How many faces does a cube have?", "6"),
    ("How many edges does a cube have?", "12"),
    ("How many bones are in the adult human body?", "206"),
    ("How many teeth does an adult human typically have?", "32"),
    (
        "How many chromosomes does a human cell typically have?",
        "46",
    ),
    ("What is the atomic number of hydrogen?", "1"),
    ("What is the atomic number of carbon?", "6"),
    ("What is the atomic number of oxygen?", "8"),
    ("How many rings are on the Olympic flag?", "5"),
    (
        "How many players does a basketball team have on the court?",
        "5",
    ),
    ("How many squares are on a chessboard?", "64"),
    (
        "How many pieces does each player start with in chess?",
        "16",
    ),
    (
        "How many cards are in a standard deck without jokers?",
        "52",
    ),
    ("How many days are in January?", "31"),
    ("How many days are in April?", "30"),
    ("How many ounces are in a pound?", "16"),
    ("How many inches are in a foot?", "12"),
    ("How many feet are in a yard?", "3"),
    ("How many quarters make a US dollar?", "4"),
    ("How many sides does a stop sign have?", "8"),
    ("How many lungs does a human have?", "2"),
    ("How many hours are in a week?", "168"),
];

/// The facts as tasks (answer and reference the number).
pub fn tasks() -> Vec<Task> {
    FACTS
        .iter()
        .map(|(question, answer)| Task::with_answer(*question, *answer))
        .collect()
}
